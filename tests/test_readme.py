"""The README is the contract with users: its example commands must not litter the repo."""

from __future__ import annotations

import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]

# flags and calls by which README commands write files
_OUTPUT = re.compile(r"(?:--(?:trials_out|scores_out|plot_out|sync_csv|projector_out)[ =]"
                     r"|np\.save\(')([^\s';\"]+)")


def _code_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S))


def test_readme_example_outputs_are_git_ignored():
    outputs = _OUTPUT.findall(_code_blocks((REPO / "README.md").read_text()))
    assert len(outputs) >= 5, outputs  # the regex still finds the example commands
    relative = [p for p in outputs if not p.startswith(("/", "$", "gs://"))]
    result = subprocess.run(["git", "check-ignore", "--no-index", *relative], cwd=REPO,
                            capture_output=True, text=True)
    ignored = set(result.stdout.split())
    # outputs must go to an ignored scratch folder, not be ignored one by one in the root
    littering = [p for p in relative if p not in ignored or "/" not in p]
    assert not littering, f"README example commands write into the repo: {littering}"
