"""The command's first hour: bad flags, bad files and bad settings each get one exact line and
the documented exit code; the fake server as other people's clients meet it."""

from __future__ import annotations

import base64
import codecs
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import ServerProcess, fake_server_process

from kling_async.testing import sign_webhook

USAGE, FAILED = 2, 1


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess, with no KLING_* settings but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    return subprocess.run(
        [sys.executable, "-m", "kling_async", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=120,
        check=False,
    )


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


POSITIVE, COUNT = "a number more than 0", "a whole number at least 1"
BATCH = ("batch", "in.jsonl", "--out", "o")


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ((*BATCH, "--rate", "0"), POSITIVE),
        ((*BATCH, "--rate", "-1"), POSITIVE),
        ((*BATCH, "--rate", "nan"), POSITIVE),
        ((*BATCH, "--concurrency", "0"), COUNT),
        (("watch", "t", "--poll-interval", "inf"), POSITIVE),
        (("extend", "v", "--cfg-scale", "1.5"), "a number from 0 to 1"),
        (("demo", "--speed", "inf"), POSITIVE),
        (("demo", "--count", "-3"), COUNT),
        (("fake-server", "--fail-rate", "nan"), "a number from 0 to 1"),
        (("fake-server", "--port", "70000"), "a whole number from 0 to 65535"),
        (("chain", "v", "--until", "nan"), POSITIVE),
        (("chain", "v", "--steps", "0"), COUNT),
        (("demo", "--chains", "-1"), "a whole number at least 0"),
        (("batch", "in", "--out", "o", "--parallel-tasks", "0"), COUNT),
        (("batch", "in", "--out", "o", "--lease", "-5"), POSITIVE),
    ],
)
def test_every_numeric_flag_is_checked_when_parsed(args: tuple[str, ...], rule: str) -> None:
    """nan, inf, zero and negatives are refused before anything runs: one line, usage code."""
    result = run_cli(*args)
    assert result.returncode == USAGE
    flag, value = args[-2:]
    assert one_line(result) == (
        f"kling-async: error: argument {flag}: must be {rule}, not '{value}' "
        f"(see: kling-async {args[0]} --help)"
    )


def write_input(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    return path


def batch(path: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"KLING_API_KEY": "k", "KLING_BASE_URL": f"http://127.0.0.1:{closed_port()}"}
    return run_cli("batch", str(path), "--out", str(tmp_path / "out.jsonl"), *extra, env=env)


def test_a_latin1_line_is_named(tmp_path: Path) -> None:
    """A line that is not UTF-8 is named with the byte at fault; nothing is sent."""
    good = json.dumps({"video_id": "v1", "task_id": "p"}).encode()
    path = write_input(tmp_path, good + b'\n{"video_id": "caf\xe9", "task_id": "p"}\n')
    result = batch(path, tmp_path)
    assert result.returncode == USAGE
    assert result.stderr.splitlines() == [
        f"kling-async: {path}:2: not UTF-8 text (byte 0xe9 at column 18); save the file as UTF-8",
        f"kling-async: error: 1 invalid line(s) in {path}; nothing was sent "
        "(fix them, or pass --skip-invalid)",
    ]
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("bom", [codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE])
def test_a_utf16_file_is_one_line(tmp_path: Path, bom: bytes) -> None:
    """A UTF-16 file (as some editors save) is named as such in one line."""
    encoding = "utf-16-le" if bom == codecs.BOM_UTF16_LE else "utf-16-be"
    path = write_input(tmp_path, bom + '{"video_id": "v1"}\n'.encode(encoding))
    result = batch(path, tmp_path)
    assert result.returncode == USAGE
    assert one_line(result) == (
        f"kling-async: error: {path} is UTF-16 text; save it as UTF-8 (one JSON object per "
        "line). Nothing was sent."
    )


def test_binary_garbage_lists_ten_lines_and_a_count(tmp_path: Path) -> None:
    """A binary file does not flood the terminal: ten lines, then how many more."""
    path = write_input(tmp_path, b"\xff\x00\n" * 25)
    result = batch(path, tmp_path)
    assert result.returncode == USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 12
    assert lines[0] == (
        f"kling-async: {path}:1: not UTF-8 text (byte 0xff at column 1); save the file as UTF-8"
    )
    assert lines[10] == "kling-async: ... and 15 more invalid line(s)"
    assert "Traceback" not in result.stderr


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte order mark (Windows editors) is not part of the first line."""
    good = b'{"video_id": "v1", "task_id": "p"}\n'
    path = write_input(tmp_path, codecs.BOM_UTF8 + good + b"[]\n")
    result = batch(path, tmp_path)
    assert result.returncode == USAGE
    assert result.stderr.splitlines()[0].startswith(f"kling-async: {path}:2: ")


def test_an_empty_input_warns(tmp_path: Path) -> None:
    """An input without requests says so (and writes an empty results file)."""
    path = write_input(tmp_path, b"\n  \n")
    result = batch(path, tmp_path)
    assert result.returncode == 0
    assert one_line(result) == f"kling-async: warning: {path} holds no requests; nothing to send"
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_a_short_secret_key_gives_only_the_error_line() -> None:
    """A short secret key adds no line of its own (PyJWT's warning): the error is the one line."""
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"KLING_ACCESS_KEY": "ak", "KLING_SECRET_KEY": "short", "KLING_BASE_URL": url}
    result = run_cli("status", "1", "--dialect", "official", env=env)
    assert result.returncode == FAILED
    assert one_line(result).startswith(
        f"kling-async: error: GET {url}/v1/videos/video-extend/1 failed before it was sent"
    )


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        ("", "'' is empty"),
        ("http://127.0.0.1.42133", "'http://127.0.0.1.42133' has host '127.0.0.1.42133', "
         "which is neither an IP address nor a domain name"),
        ("http://localhost:99999", "'http://localhost:99999' has a port that is not a number "
         "from 0 to 65535"),
        ("api.example.com", "'api.example.com' is not an absolute http:// or https:// URL"),
    ],
)  # fmt: skip
def test_a_bad_base_url_is_a_setting_error_at_once(base_url: str, problem: str) -> None:
    """An empty or malformed KLING_BASE_URL is refused before any request, naming it."""
    result = run_cli("status", "1", env={"KLING_API_KEY": "k", "KLING_BASE_URL": base_url})
    assert result.returncode == USAGE
    assert one_line(result) == (
        "kling-async: error: KLING_BASE_URL (or --base-url) must be the API's http(s) URL, "
        f"such as https://api-singapore.klingai.com; {problem}."
    )


def test_a_refused_connection_names_the_whole_url() -> None:
    """Connection refused: the full URL with the gateway's prefix, and where to look."""
    url = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("status", "42", env={"KLING_API_KEY": "k", "KLING_BASE_URL": url})
    assert result.returncode == FAILED
    line = one_line(result)
    assert line.startswith(
        f"kling-async: error: GET {url}/kling/v1/videos/video-extend/42 failed before it was "
        "sent: ClientConnectorError ("
    )
    assert line.endswith("). Is the server up? Check KLING_BASE_URL (or --base-url).")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KLING_API_KEY": "k", "KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "s"},
            "Give either KLING_API_KEY (or --api-key) or KLING_ACCESS_KEY (or --access-key) "
            "and KLING_SECRET_KEY (or --secret-key), not both.",
        ),
        (
            {},
            "No credentials: give KLING_API_KEY (or --api-key), or KLING_ACCESS_KEY (or "
            "--access-key) and KLING_SECRET_KEY (or --secret-key) for the official API.",
        ),
        (
            {"KLING_ACCESS_KEY": "a"},
            "An access key pair needs both keys; KLING_SECRET_KEY (or --secret-key) is missing.",
        ),
        (
            {"KLING_ACCESS_KEY": "a", "KLING_SECRET_KEY": "s", "KLING_DIALECT": "gateway"},
            "The gateway dialect takes KLING_API_KEY (or --api-key); access and secret keys are "
            "for the official API: set KLING_DIALECT (or --dialect) to official.",
        ),
    ],
)
def test_settings_are_named_as_the_command_takes_them(env: dict[str, str], message: str) -> None:
    """Messages name variables and flags, not Python arguments; a key and a pair clash."""
    result = run_cli("status", "1", env=env)
    assert result.returncode == USAGE
    assert one_line(result) == f"kling-async: error: {message}"


def test_status_has_no_polling_option() -> None:
    """status reads once: its help offers no --poll-interval; the others explain exit codes."""
    status = run_cli("status", "--help")
    assert "--poll-interval" not in status.stdout
    assert "--poll-interval" in run_cli("watch", "--help").stdout
    assert "2 a usage or input error" in " ".join(run_cli("--help").stdout.split())


def test_fake_server_help_shows_defaults_and_dialects() -> None:
    """fake-server --help gives each default and says what a dialect is."""
    text = " ".join(run_cli("fake-server", "--help").stdout.split())
    assert "(default: 8765)" in text
    assert "(default: test-api-key)" in text
    assert "'gateway' (a reseller: paths /kling/v1/..." in text


# -- the fake server from outside ---------------------------------------------------------


def http(method: str, url: str, body: Any = None, key: str = "test-api-key") -> Any:
    """One request with the standard library (another client than ours); the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - local
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - local
            return json.load(answer)
    except urllib.error.HTTPError as refused:
        with refused:
            return json.load(refused)


def create(server: ServerProcess, video_id: str = "v1") -> Any:
    return http(
        "POST", f"{server.url}/kling/v1/videos/video-extend", {"video_id": video_id, "task_id": "p"}
    )


def test_servers_differ_unless_seeded() -> None:
    """Two servers without --seed issue different ids; the same --seed, the same ids."""
    ids = []
    for args in ([], [], ["--seed", "7"], ["--seed", "7"]):
        with fake_server_process(*args) as server:
            ids.append(create(server)["data"]["task_id"])
    assert ids[0] != ids[1]
    assert ids[2] == ids[3]


def test_fake_server_logs_requests_and_sums_up() -> None:
    """A line per request while it runs; on Ctrl-C, what it saw."""
    with fake_server_process("--seed", "1") as server:
        task_id = create(server)["data"]["task_id"]
        create(server)
        http("GET", f"{server.url}/kling/v1/videos/video-extend/{task_id}")
        http("GET", f"{server.url}/nope")
    assert server.returncode == 130
    assert server.log == [
        f"POST /kling/v1/videos/video-extend -> 200 task {task_id}\n",
        f"POST /kling/v1/videos/video-extend -> 200 task {server.log[1].split()[-1]}\n",
        f"GET /kling/v1/videos/video-extend/{task_id} -> 200 task {task_id}\n",
        "GET /nope -> 404\n",
        "Saw 4 requests: 2 creates (1 for a video already extended), 1 task reads, 1 refused; "
        "at most 2 tasks at once.\n",
    ]


def test_fake_server_checks_jwts_of_an_access_key_pair() -> None:
    """--access-key/--secret-key: the printed exports are all a client needs; others fail."""
    secret = "fake-secret-key-of-32-characters"
    with fake_server_process(
        "--dialect", "official", "--access-key", "ak-1", "--secret-key", secret
    ) as server:
        exports = dict(line.split()[1].split("=", 1) for line in server.banner if "export " in line)
        assert exports == {
            "KLING_BASE_URL": server.url,
            "KLING_DIALECT": "official",
            "KLING_ACCESS_KEY": "ak-1",
            "KLING_SECRET_KEY": secret,
        }
        assert server.banner[-1] == "  kling-async extend VIDEO_ID --wait\n"
        made = run_cli("extend", "v1", "--json", env=exports)
        wrong = run_cli("status", "1", env={**exports, "KLING_SECRET_KEY": secret[::-1]})
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["status"] == "submitted"
    assert wrong.returncode == FAILED
    assert "1002" in wrong.stderr or "invalid" in wrong.stderr.lower()


def test_fake_server_refuses_a_key_pair_on_a_gateway() -> None:
    """A key pair makes sense only for the official dialect: one line, usage code."""
    result = run_cli("fake-server", "--access-key", "a", "--secret-key", "s")
    assert result.returncode == USAGE
    assert one_line(result) == (
        "kling-async: error: --access-key and --secret-key need --dialect official: gateways "
        "take a bearer key"
    )


def test_fake_server_fault_knobs() -> None:
    """--max-concurrent refuses the task past the limit (1303); --require-known-videos
    refuses unknown parents; --fail-rate 1 fails every task."""
    with fake_server_process("--max-concurrent", "1", "--speed", "0.001") as server:
        assert create(server, "a")["code"] == 0
        assert create(server, "b")["code"] == 1303
    with fake_server_process("--require-known-videos") as server:
        assert create(server)["code"] == "task_not_exist"
    with fake_server_process("--fail-rate", "1", "--speed", "1e9") as server:
        task_id = create(server)["data"]["task_id"]
        task = http("GET", f"{server.url}/kling/v1/videos/video-extend/{task_id}")["data"]
    assert task["task_status"] == "failed"


def test_fake_server_signs_callbacks_with_its_webhook_secret() -> None:
    """--webhook-secret: callbacks carry Standard Webhooks headers, signed with the secret."""
    heard: list[tuple[dict[str, str], bytes]] = []
    arrived = threading.Event()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            heard.append((dict(self.headers), body))
            arrived.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    secret = "whsec_" + base64.b64encode(b"a webhook secret of 32 bytes....").decode()
    with (
        ThreadingHTTPServer(("127.0.0.1", 0), Hook) as hooks,
        fake_server_process("--webhook-secret", secret, "--speed", "1e9") as server,
    ):
        threading.Thread(target=hooks.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{hooks.server_address[1]}/hook"
        body = {"video_id": "v1", "task_id": "p", "callback_url": url}
        assert http("POST", f"{server.url}/kling/v1/videos/video-extend", body)["code"] == 0
        assert arrived.wait(timeout=120)  # a guard against a hang only
        hooks.shutdown()
    headers, payload = heard[0]
    assert headers["webhook-signature"] == sign_webhook(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), payload
    )
