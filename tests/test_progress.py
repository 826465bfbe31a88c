"""pipelines.progress: per-task progress files summed into a live bar by the driver."""
import threading

from pipelines import progress


def test_tasks_report_and_retries_are_not_double_counted(tmp_path):
  d = str(tmp_path / "p")
  assert progress.total_done(d) == 0  # nothing reported yet: no directory at all
  progress.report(d, 0, 3)
  progress.report(d, 1, 2)
  progress.report(d, 0, 1)  # task 0 retried from the start: its own file is overwritten
  assert progress.total_done(d) == 3
  (tmp_path / "p" / "00002.tmp-1a2b").write_text("7")  # a writer mid-rename is ignored
  assert progress.total_done(d) == 3


def test_watch_shows_what_concurrent_tasks_reported(tmp_path, capfd):
  d = str(tmp_path / "p")

  def task(i):
    for done in range(1, 6):
      progress.report(d, i, done)

  with progress.watch(d, total=15, desc="tasks", unit="ep", interval_s=0.01):
    threads = [threading.Thread(target=task, args=(i,)) for i in range(3)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert "15/15" in capfd.readouterr().err


def test_watch_disabled_prints_nothing(tmp_path, capfd):
  with progress.watch(str(tmp_path), total=1, desc="x", unit="ep", enabled=False):
    progress.report(str(tmp_path), 0, 1)
  assert capfd.readouterr().err == ""
