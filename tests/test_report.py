"""relay_agents.report: mean ± std over seeds from `relay eval --json` files."""
import json

from relay_agents import report


def _run(success, done):
  split = {"success_rate": success, "step_completion": done, "goals": 17}
  per_goal = [{"goal": f"g{i}", "heldout": i >= 17, "completions": [4, 0, 2]} for i in range(20)]
  return {"ril": {"frequent": split, "heldout": dict(split, goals=3), "per_goal": per_goal}}


def test_aggregate_markdown_and_plot(tmp_path):
  files = []
  for i, (s, d) in enumerate([(0.2, 2.0), (0.4, 3.0)]):
    files.append(str(tmp_path / f"eval_s{i}.json"))
    json.dump(_run(s, d), open(files[-1], "w"))
  assert report.main(files + ["--out", str(tmp_path / "t.md"), "--plot", str(tmp_path / "t.png")]) == 0
  table = (tmp_path / "t.md").read_text()
  assert "| ril | 2 | 3 | 30.0 ± 10.0 | 2.50 ± 0.50 | 30.0 ± 10.0 | 2.50 ± 0.50 |" in table
  assert (tmp_path / "t.png").stat().st_size > 1000
