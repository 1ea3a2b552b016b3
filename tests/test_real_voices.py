"""Smoke test of benchmarks/real_voices.py on the bundled LibriSpeech speakers (issue 14).

A fresh clone has no ../shared data: the benchmark's world is built from 4 of the bundled
test-other speakers x 2 utterances (2 speakers for training, 2 held out), also used as the
`--eval_voices` folder; only the path and the report are checked here, not the numbers (a few
steps of a tiny model learn nothing).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from av_disentangle.errors import UserError
from benchmarks import real_voices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = os.path.join(REPO, "data", "samples", "librispeech_subset")  # 5 speakers x 10


def _small_voices(root, speakers: int = 4, utterances: int = 2) -> str:
    """The first bundled speakers x their first utterances, LibriSpeech names, `<spk>/`."""
    names = sorted(d for d in os.listdir(SUBSET) if os.path.isdir(os.path.join(SUBSET, d)))
    for spk in names[:speakers]:
        os.makedirs(root / spk)
        for name in sorted(os.listdir(os.path.join(SUBSET, spk)))[:utterances]:
            shutil.copy(os.path.join(SUBSET, spk, name), root / spk / name)
    return str(root)


@pytest.mark.slow  # 45-60 s on the shared 2-core machine (TF import, 2 worlds, 1 training)
def test_supervised_row_exists_and_is_in_range(tmp_path, capsys):
    small = _small_voices(tmp_path / "voices")
    out = tmp_path / "real_voices.json"
    rc = real_voices.main(["--quick", "--voices", small, "--eval_voices", small,
                           "--train_speakers", "0", "--holdout_speakers", "2",
                           "--rows", "supervised", "--seeds", "1", "--steps", "3",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"| {real_voices.SUPERVISED} |" in printed
    assert sorted(os.listdir(tmp_path)) == ["real_voices.json", "voices", "work"]  # no temp

    payload = json.loads(out.read_text())
    rows = {r["config"]: r for r in payload["rows"]}
    assert list(rows) == [real_voices.SUPERVISED, *real_voices.BASELINE_ROWS]
    (run,) = rows[real_voices.SUPERVISED]["runs"]
    assert run["seed"] == 0 and run["steps"] == 3 and run["train_seconds"] > 0
    assert math.isfinite(run["train_loss"])
    # The supervised model is trained on the 2 training speakers, never the held-out 2.
    assert run["labelled_speakers"] == 2
    for key in ("heldout_eer", "heldout_min_dcf", "heldout_eer_raw_bn", "eval_eer",
                "eval_min_dcf"):
        assert 0.0 <= run[key] <= 1.0, (key, run[key])
    # Scored on the same trials as the free baselines (evaluate.py --baseline's functions).
    for name in real_voices.BASELINE_ROWS:
        base = rows[name]["runs"][0]
        assert (run["heldout_trials"], run["eval_trials"]) == (base["heldout_trials"],
                                                             base["eval_trials"]), name
        assert 0.0 <= base["heldout_eer"] <= 1.0 and 0.0 <= base["eval_eer"] <= 1.0
    assert run["heldout_targets"] > 0 and run["eval_targets"] > 0

    # --resume: the stored seed-0 run is kept as it is (not retrained), seed 1 is added.
    common = ["--quick", "--voices", small, "--eval_voices", small, "--train_speakers", "0",
              "--holdout_speakers", "2", "--rows", "supervised",
              "--workdir", str(tmp_path / "work"), "--json", str(out), "--resume"]
    assert real_voices.main(common + ["--seeds", "2", "--steps", "3"]) == 0
    runs = {r["config"]: r for r in json.loads(out.read_text())["rows"]}[
        real_voices.SUPERVISED]["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0] == run  # train_seconds included: the same stored run, not a new one
    assert json.loads(out.read_text())["total_seconds"] > payload["total_seconds"]
    # A different setting is refused, naming the file and the setting; the file is kept.
    before = out.read_text()
    with pytest.raises(UserError, match=r"real_voices\.json: cannot resume.*'steps'"):
        real_voices.main(common + ["--seeds", "2", "--steps", "4"])
    assert out.read_text() == before


@pytest.mark.slow  # ~40 s on the shared 2-core machine (TF import, 2 worlds, 1 training)
def test_self_supervised_row_keeps_its_history_and_curve(tmp_path):
    out = tmp_path / "real_voices.json"
    work = tmp_path / "work"
    # 2 training speakers x 2 utterances: 4 videos cannot make a batch of 12 distinct ones.
    small = _small_voices(tmp_path / "small")
    # (train.py's trainer says it, naming the shards.)
    with pytest.raises(UserError, match=r"train/shard-\*-of-\*\.tfrecord makes no full batch "
                                        r"of --batch_tracks tracks of distinct videos"):
        real_voices.main(["--quick", "--voices", small, "--eval_voices", small,
                          "--train_speakers", "0", "--holdout_speakers", "2", "--rows",
                          "joint", "--steps", "2", "--workdir", str(work)])
    # 3 training speakers x 6 utterances: 18 videos; 2 held-out speakers.
    voices = _small_voices(tmp_path / "voices", speakers=5, utterances=6)
    rc = real_voices.main(["--quick", "--voices", voices, "--eval_voices", small,
                           "--train_speakers", "0", "--holdout_speakers", "2",
                           "--rows", "joint", "--seeds", "1", "--steps", "2", "--curve", "1",
                           "--optimizer", "sgd", "--learning_rate", "0.01",
                           "--workdir", str(work), "--json", str(out)])
    assert rc == 0
    payload = json.loads(out.read_text())
    # The recipe (train.py's optimizer flags) is part of the preset, so --resume cannot mix.
    assert (payload["preset"]["optimizer"], payload["preset"]["learning_rate"]) == ("sgd", 0.01)
    (run,) = {r["config"]: r for r in payload["rows"]}[real_voices.JOINT]["runs"]
    # One epoch of 2 steps: the per-epoch history of both tasks, the last loss as train_loss.
    assert run["history"]["loss"][-1] == run["train_loss"]
    for key in ("content_acc", "identity_acc", "identity_loss"):
        assert len(run["history"][key]) == 1, key
    # The curve: step 0 (initialisation), 1 and 2; SV EER and sync@1 are fractions.
    assert [p[0] for p in run["curve"]] == [0, 1, 2]
    assert all(0.0 <= v <= 1.0 for p in run["curve"] for v in p[1:])
    logs = [f for _, _, names in os.walk(work / "curves") for f in names]
    assert any(f.startswith("events.out.tfevents") for f in logs), logs


def test_completed_runs_reads_back_what_main_writes_and_refuses_other_settings(tmp_path):
    settings = {"mode": "full", "voices": "/v", "eval_voices": "/e", "steps": 250,
                "world": {"seed": 0}, "preset": {"steps": 250}, "supervised": {"lr": 0.001}}
    path = tmp_path / "r.json"
    assert real_voices.completed_runs(str(path), settings) == ({}, 0.0)
    runs = {real_voices.JOINT: [_run(0, 0.4), _run(1, 0.3)], real_voices.LTAS: [_run(0, 0.2)]}
    path.write_text(json.dumps({**settings, "seeds": 3, "total_seconds": 12.5,
                                "rows": real_voices.make_rows(runs)}))
    done, seconds = real_voices.completed_runs(str(path), settings)
    assert done == {real_voices.JOINT: runs[real_voices.JOINT]} and seconds == 12.5
    for key, value in (("preset", {"steps": 100}), ("voices", "/other")):
        with pytest.raises(UserError, match=f"r.json: cannot resume.*'{key}'"):
            real_voices.completed_runs(str(path), {**settings, key: value})
    path.write_text("{not json")
    with pytest.raises(UserError, match="r.json: cannot resume from it"):
        real_voices.completed_runs(str(path), settings)


def _run(seed: int, heldout_eer: float) -> dict:
    return {"seed": seed, "data_seed": 0, "steps": 10, "train_seconds": 1.0,
            "heldout_eer": heldout_eer, "heldout_min_dcf": 0.5, "eval_eer": 0.3,
            "eval_min_dcf": 0.9}


def test_rows_have_spread_and_paired_differences_to_untrained_and_joint():
    untrained = [_run(s, e) for s, e in enumerate((0.40, 0.45, 0.50))]
    joint = [_run(s, e - 0.10) for s, e in enumerate((0.40, 0.45, 0.50))]  # always 10 lower
    noisy = [_run(s, e) for s, e in enumerate((0.30, 0.50, 0.46))]  # 2 lower on average
    rows = {r["config"]: r for r in real_voices.make_rows(
        {real_voices.UNTRAINED: untrained, real_voices.JOINT: joint,
         real_voices.SUPERVISED: noisy, real_voices.LTAS: [_run(0, 0.2)]})}
    sup = rows[real_voices.SUPERVISED]
    assert math.isclose(sup["mean"]["heldout_eer"], 0.42)
    assert math.isclose(sup["std"]["heldout_eer"], 0.10583, rel_tol=1e-4)  # ddof 1
    assert math.isclose(sup["ci95"]["heldout_eer"], 4.3027 * 0.10583 / 3 ** 0.5, rel_tol=1e-4)
    vs_untrained = rows[real_voices.JOINT]["differences"]["vs " + real_voices.UNTRAINED]
    assert math.isclose(vs_untrained["heldout_eer"]["mean"], -0.10)
    assert vs_untrained["heldout_eer"]["significant"]  # identical shift: interval excludes 0
    assert not vs_untrained["eval_eer"]["significant"]  # no difference at all
    d = sup["differences"]["vs " + real_voices.UNTRAINED]["heldout_eer"]
    assert d["n"] == 3 and math.isclose(d["mean"], -0.03) and not d["significant"]
    assert math.isclose(sup["differences"]["vs " + real_voices.JOINT]["heldout_eer"]["mean"],
                        0.07)
    # No row is compared with itself; the deterministic LTAS reference with nothing.
    assert "vs " + real_voices.UNTRAINED not in rows[real_voices.UNTRAINED]["differences"]
    assert rows[real_voices.UNTRAINED]["differences"] == {}  # vs joint = joint's, negated
    assert "vs " + real_voices.JOINT not in rows[real_voices.JOINT]["differences"]
    assert rows[real_voices.LTAS]["differences"] == {}
    text = real_voices.format_differences(list(rows.values()), real_voices.UNTRAINED)
    line = next(x for x in text.splitlines() if x.startswith(f"| {real_voices.JOINT} |"))
    assert "-10.0 [0.0]*" in line
