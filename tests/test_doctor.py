"""relay doctor: real checks of each stack component, and clear failures."""
import socket

from relay import doctor


def test_all_checks_pass_on_this_stack(tmp_path):
  results = doctor.run_checks(data_dir=str(tmp_path))
  assert [r.name for r in results] == doctor.CHECK_NAMES
  failed = {r.name: r.detail for r in results if not r.ok}
  assert not failed, failed
  by_name = {r.name: r for r in results}
  assert "dm-reverb 0.14.0" in by_name["reverb"].version
  assert "mujoco 3.11.0" in by_name["kitchen"].version
  # The TFDS check really built a dataset in the given data dir (and left it readable).
  assert (tmp_path / "doctor_episode" / "1.0.0" / "dataset_info.json").exists()


def test_reverb_check_fails_on_a_port_in_use():
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    sock.listen()
    port = sock.getsockname()[1]
    (result,) = doctor.run_checks(reverb_port=port, only=["reverb"])
  assert not result.ok
  assert f"localhost:{port}" in result.detail


def test_cli_exits_nonzero_and_names_the_broken_component(tmp_path, cli):
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("x")
  proc = cli("doctor", "--only", "tfds+rlds", "beam", "--data-dir", str(not_a_dir / "sub"))
  assert proc.returncode == 1
  assert "broken component(s): tfds+rlds" in proc.stderr
  table = proc.stdout
  assert "tfds+rlds  FAIL" in table and "beam       OK" in table


def test_cli_help_lists_subcommands(cli):
  proc = cli("--help", check=True)
  assert "doctor" in proc.stdout and "check every stack component" in proc.stdout
  proc = cli("doctor", "--bad-flag")
  assert proc.returncode == 2 and "unrecognized arguments: --bad-flag" in proc.stderr
