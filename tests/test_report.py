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


def test_truncated_eval_json_names_the_file_and_writes_nothing(tmp_path, capsys):
  good, bad = tmp_path / "eval_s0.json", tmp_path / "eval_s1.json"
  json.dump(_run(0.2, 2.0), open(good, "w"))
  bad.write_text(json.dumps(_run(0.4, 3.0))[:50])  # torn mid-write
  out = tmp_path / "t.md"
  try:
    report.main([str(good), str(bad), "--out", str(out)])
  except SystemExit as e:
    assert e.code == 2
  else:
    raise AssertionError("a torn eval JSON must be an error")
  assert str(bad) in capsys.readouterr().err
  assert sorted(tmp_path.iterdir()) == sorted([good, bad])  # no table, no temp file left behind


def test_runs_without_heldout_goals_and_with_the_env_limit(tmp_path):
  """`relay eval` JSON: held-out summaries are null when there are none (strict JSON), and the
  results at the env's own 280-step limit sit beside those at --max-steps."""
  split = {"success_rate": 0.5, "step_completion": 3.0, "goals": 1}
  none = {"success_rate": None, "step_completion": None, "goals": 0}
  run = {"ril": {"frequent": split, "heldout": none, "max_steps": 400, "per_goal": [{"completions": [4, 2]}],
                 "horizons": {"280": {"frequent": dict(split, success_rate=0.25), "heldout": none},
                              "400": {"frequent": split, "heldout": none}}}}
  path = tmp_path / "eval.json"
  path.write_text(json.dumps(run, allow_nan=False))
  assert report.main([str(path), "--out", str(tmp_path / "t.md")]) == 0
  table = (tmp_path / "t.md").read_text()
  assert "success % (demo goals, 280 steps)" in table
  assert "| ril | 1 | 2 | 50.0 ± 0.0 | 3.00 ± 0.00 | - | - | 25.0 ± 0.0 | 3.00 ± 0.00 |" in table


def test_labels_rename_a_files_methods_so_runs_of_one_method_get_their_own_rows(tmp_path):
  """The same method evaluated two ways (or trained twice) in files of one key each: LABEL=PATH
  gives each its row, merged over seeds by that label."""
  paths = {}
  for name, s, d in (("a0", 0.2, 2.0), ("a1", 0.4, 3.0), ("b0", 0.0, 1.0)):
    paths[name] = tmp_path / f"{name}.json"
    json.dump(_run(s, d), open(paths[name], "w"))
  both = tmp_path / "both.json"
  json.dump({"gcbc": _run(0.1, 1.5)["ril"], "bc": _run(0.3, 0.5)["ril"]}, open(both, "w"))
  argv = [f"every step={paths['a0']}", f"every step={paths['a1']}", f"paper={paths['b0']}", f"base={both}",
          "--out", str(tmp_path / "t.md")]
  assert report.main(argv) == 0
  table = (tmp_path / "t.md").read_text()
  assert "| every step | 2 | 3 | 30.0 ± 10.0 | 2.50 ± 0.50 |" in table
  assert "| paper | 1 | 3 | 0.0 ± 0.0 | 1.00 ± 0.00 |" in table
  assert "| base/gcbc | 1 | 3 | 10.0 ± 0.0 | 1.50 ± 0.00 |" in table
  assert "| base/bc | 1 | 3 | 30.0 ± 0.0 | 0.50 ± 0.00 |" in table
  assert "| ril |" not in table


def test_a_label_on_a_missing_file_names_the_path(tmp_path, capsys):
  missing = tmp_path / "nope.json"
  try:
    report.main([f"x={missing}"])
  except SystemExit as e:
    assert e.code == 2
  else:
    raise AssertionError("a missing eval JSON must be an error")
  assert str(missing) in capsys.readouterr().err
