"""The MT-bench judge against a real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol."""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval.mtbench.__main__ import main
from eval.mtbench.chat_api import JudgeEndpointError, OpenAIChatClient
from eval.mtbench.data import MTBenchError, default_reference_file, load_answers, load_questions, read_jsonl
from eval.mtbench.judge import HTTPJudge, judge_answers

SECRET = "sk-test-Zq81secretKEY"
KEY_ENV = "MTBENCH_TEST_JUDGE_KEY"
MULTI_TURN_MARK = "Conversation with User"  # appears only in FastChat's multi-turn judge prompts
QUESTION_IDS = (81, 101, 111)  # writing (single-v1), reasoning and math (single-math-v1, with reference answers)


class FakeOpenAI(ThreadingHTTPServer):
    """Replies by script: each POST pops the next action, else uses `default`; every request is recorded."""

    daemon_threads = True
    block_on_close = False  # a handler still sleeping in a timeout test must not block shutdown

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.script: list[tuple] = []
        self.default: tuple = ("rate",)
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, text: str, content_type: str = "application/json") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server: FakeOpenAI = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            action = server.script.pop(0) if server.script else server.default
        kind = action[0]
        try:
            if kind == "sleep":
                time.sleep(action[1])
                self._send(200, _completion("[[5]]"))
            elif kind == "status":
                self._send(action[1], json.dumps({"error": {"message": "server exploded"}}))
            elif kind == "echo_auth_401":
                self._send(401, json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}))
            elif kind == "echo_auth_500":  # a broken proxy dumping the request headers into its error page
                self._send(502, f"upstream failed; request headers: {dict(self.headers)}", "text/plain")
            elif kind == "echo_auth_reply":  # a reply that quotes the request headers back (saved in the judgments)
                self._send(200, _completion(f"Rating: [[7]] seen: Authorization: {self.headers.get('Authorization')}"
                                            f" and {{'Authorization': '{self.headers.get('Authorization')}'}}"))
            elif kind == "raw":
                self._send(200, action[1], "text/html")
            elif kind == "json":
                self._send(200, json.dumps(action[1]))
            elif kind == "reply":
                self._send(200, _completion(action[1]))
            else:  # "rate": a judgment whose rating depends on the prompt, so tests know the expected scores
                user = body["messages"][-1]["content"]
                if MULTI_TURN_MARK in user:
                    text = "Turn two is weak; no number given." if "ANSWER-81" in user else "Fine. Rating: [6]"
                else:
                    text = "Good. Rating: [[8]]" if "ANSWER-81" in user else "Correct. Rating: [[9.5]]"
                self._send(200, _completion(text))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


def _completion(text: str) -> str:
    return json.dumps({"id": "x", "object": "chat.completion", "model": "judge",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]})


@pytest.fixture
def server():
    srv = FakeOpenAI()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def _questions():
    return [q for q in load_questions() if q["question_id"] in QUESTION_IDS]


def _toy_answers():
    return {qid: {"question_id": qid, "answer_id": f"a{qid}", "model_id": "toy", "tstamp": 0.0,
                  "choices": [{"index": 0, "turns": [f"ANSWER-{qid} first", f"ANSWER-{qid} second"]}]}
            for qid in QUESTION_IDS}


def _client(server, **kw):
    options = {"api_key_env": KEY_ENV, "timeout_s": 5.0, "max_retries": 2, "backoff_s": 0.01}
    return OpenAIChatClient(server.base_url, "judge-x", **{**options, **kw})


def test_judging_writes_fastchat_records_and_resumes(server, key_env, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "toy_judgment.jsonl"
    refs = load_answers(default_reference_file())
    stats = judge_answers({"toy": _toy_answers()}, _questions(), HTTPJudge(_client(server)), out,
                          reference_answers=refs, progress=False)
    assert stats["judged"] == 6 and stats["skipped_done"] == 0
    records = read_jsonl(out)
    assert all(set(r) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
               for r in records)
    by_key = {(r["question_id"], r["turn"]): r for r in records}
    # [[8]] parsed; [6] parsed by the backup pattern; no rating -> -1; 9.5 stays a float
    assert by_key[(81, 1)]["score"] == 8 and by_key[(81, 2)]["score"] == -1
    assert by_key[(101, 1)]["score"] == 9.5 and by_key[(111, 2)]["score"] == 6
    assert by_key[(81, 1)]["judge"] == ["judge-x", "single-v1"]
    assert by_key[(81, 2)]["judge"] == ["judge-x", "single-v1-multi-turn"]
    assert by_key[(111, 1)]["judge"] == ["judge-x", "single-math-v1"]
    assert by_key[(101, 2)]["judge"] == ["judge-x", "single-math-v1-multi-turn"]
    # math prompts carry GPT-4's reference answers; turn 2 shows the whole conversation
    assert refs[111]["choices"][0]["turns"][0] in by_key[(111, 1)]["user_prompt"]
    assert refs[111]["choices"][0]["turns"][1] in by_key[(111, 2)]["user_prompt"]
    assert "ANSWER-101 first" in by_key[(101, 2)]["user_prompt"]

    assert len(server.requests) == 6
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == f"Bearer {SECRET}"
        body = request["body"]
        assert body["model"] == "judge-x" and body["temperature"] == 0 and body["max_tokens"] == 2048
        assert [m["role"] for m in body["messages"]] == ["system", "user"]

    again = judge_answers({"toy": _toy_answers()}, _questions(), HTTPJudge(_client(server)), out,
                          reference_answers=refs, progress=False)
    assert again["judged"] == 0 and again["skipped_done"] == 6 and len(server.requests) == 6
    assert SECRET not in out.read_text() and SECRET not in caplog.text and SECRET not in "".join(capsys.readouterr())


def test_retry_after_server_error_then_success(server, key_env, caplog):
    server.script = [("status", 500), ("status", 503), ("reply", "ok [[3]]")]
    assert _client(server).complete([{"role": "user", "content": "hi"}]) == "ok [[3]]"
    assert len(server.requests) == 3
    assert "HTTP 500" in caplog.text and "retry 2/2" in caplog.text


def test_timeout_gives_one_clear_error_after_retries(server, key_env):
    server.default = ("sleep", 1.0)
    start = time.perf_counter()
    with pytest.raises(JudgeEndpointError, match=r"failed 3 times in a row; last problem: timed out after 0.2 s"):
        _client(server, timeout_s=0.2).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3 and time.perf_counter() - start < 3.0


@pytest.mark.parametrize("action, message", [
    (("raw", "<html>gateway</html>"), "reply is not JSON"),
    (("json", {"object": "chat.completion"}), "no choices"),
    (("json", {"choices": [{"message": {"content": None}}]}), "not text"),
])
def test_endpoint_answering_nonsense_fails_clearly(server, key_env, action, message):
    server.default = action
    with pytest.raises(JudgeEndpointError, match=message):
        _client(server, max_retries=1).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 2


def test_client_error_is_not_retried_and_key_is_redacted(server, key_env):
    server.default = ("echo_auth_401",)
    with pytest.raises(JudgeEndpointError, match="HTTP 401") as info:
        _client(server).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1
    assert SECRET not in str(info.value) and "***" in str(info.value)
    assert SECRET not in repr(_client(server))


def test_missing_key_variable_is_named(monkeypatch, server):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(MTBenchError, match=KEY_ENV):
        _client(server)


def test_cli_judge_writes_judgments_and_scores(server, key_env, tmp_path, capsys):
    question_file = tmp_path / "questions.jsonl"
    question_file.write_text("".join(json.dumps(q) + "\n" for q in _questions()))
    answer_dir = tmp_path / "run" / "eval" / "mtbench" / "model_answer"
    answer_dir.mkdir(parents=True)
    (answer_dir / "toy.jsonl").write_text("".join(json.dumps(a) + "\n" for a in _toy_answers().values()))

    code = main(["judge", "--run-dir", str(tmp_path / "run"), "--question-file", str(question_file),
                 "--base-url", server.base_url, "--judge-model", "judge-x", "--api-key-env", KEY_ENV,
                 "--parallel", "2", "--max-retries", "1"])
    assert code == 0
    out = tmp_path / "run" / "eval" / "mtbench"
    scores = json.loads((out / "scores_judge-x.json").read_text())
    toy = scores["models"]["toy"]
    # turn 1: 8, 9.5, 9.5; turn 2: (-1 dropped), 6, 6; overall over the five kept scores
    assert toy["turn1"] == pytest.approx(9.0) and toy["turn2"] == pytest.approx(6.0)
    assert toy["overall"] == pytest.approx((8 + 9.5 + 9.5 + 6 + 6) / 5) and toy["n_unparseable"] == 1
    assert toy["categories"] == pytest.approx({"math": 7.75, "reasoning": 7.75, "writing": 8.0})
    assert len(read_jsonl(out / "model_judgment" / "judge-x_single.jsonl")) == 6
    printed = capsys.readouterr().out
    assert "########## Second turn ##########" in printed
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text()
    assert SECRET not in printed


def test_cli_reports_unreachable_endpoint_in_one_line(key_env, tmp_path, capsys):
    answer_dir = tmp_path / "model_answer"
    answer_dir.mkdir()
    (answer_dir / "toy.jsonl").write_text(json.dumps(_toy_answers()[81]) + "\n")
    code = main(["judge", "--out-dir", str(tmp_path), "--end", "1", "--base-url", "http://127.0.0.1:9/v1",
                 "--api-key-env", KEY_ENV, "--max-retries", "0", "--timeout", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: judge endpoint") and "connection error" in err[-1]


# --- secrets: no failure mode of the endpoint gets the key into any output ------------------------------------------
def _judge_setup(tmp_path):
    question_file = tmp_path / "questions.jsonl"
    question_file.write_text(json.dumps(next(q for q in _questions() if q["question_id"] == 81)) + "\n")
    answer_dir = tmp_path / "run" / "eval" / "mtbench" / "model_answer"
    answer_dir.mkdir(parents=True)
    (answer_dir / "toy.jsonl").write_text(json.dumps(_toy_answers()[81]) + "\n")
    return ["judge", "--run-dir", str(tmp_path / "run"), "--question-file", str(question_file), "--turns", "1",
            "--judge-model", "judge-x", "--api-key-env", KEY_ENV, "--max-retries", "1", "--retry-backoff", "0.01",
            "--timeout", "0.5"]


def _assert_no_secret_anywhere(tmp_path, *texts):
    leaks = [t for t in texts if SECRET in t or f"Bearer {SECRET[:8]}" in t]
    assert not leaks, f"the key leaked into output: {leaks[0][:300]!r}"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert SECRET not in text and "Bearer sk-" not in text, f"the key leaked into {path}"


@pytest.mark.parametrize("action, code, message", [
    (("status", 500), 1, "failed 2 times in a row; last problem: HTTP 500"),
    (("sleep", 2.0), 1, "timed out after 0.5 s"),
    (("echo_auth_401",), 1, "refused the request with HTTP 401"),
    (("echo_auth_500",), 1, "HTTP 502"),
    (("raw", "<html>gateway</html>"), 1, "reply is not JSON"),
    (("json", {"object": "chat.completion"}), 1, "no choices"),
    (("json", {"choices": [{"message": {"content": None}}]}), 1, "not text"),
    (("echo_auth_reply",), 0, None),
    (("reply", "fine [[5]]"), 0, None),
])
def test_no_failure_mode_of_the_judge_leaks_the_key(server, tmp_path, monkeypatch, capfd, caplog, action, code,
                                                    message):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET + "\n")  # as read from a file: the newline is stripped, not sent
    server.default = action
    assert main([*_judge_setup(tmp_path), "--base-url", server.base_url]) == code
    out, err = capfd.readouterr()
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)
    if message is not None:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], err
    else:
        judgment = (tmp_path / "run" / "eval" / "mtbench" / "model_judgment" / "judge-x_single.jsonl").read_text()
        assert "judgment" in judgment and ("***" in judgment or action[0] == "reply")
    _assert_no_secret_anywhere(tmp_path, out, err, caplog.text)


@pytest.mark.parametrize("value, problem", [
    ("", "is empty"), ("  \n", "is empty"), (f"{SECRET}\nX-Evil: 1", "a control character at position 22"),
    (f"sk test {SECRET}", "a space at position 3"), (f"{SECRET}é", "a non-ASCII character"),
])
def test_a_malformed_key_is_refused_before_any_request(server, tmp_path, monkeypatch, capfd, caplog, value, problem):
    monkeypatch.setenv(KEY_ENV, value)
    assert main([*_judge_setup(tmp_path), "--base-url", server.base_url]) == 2
    out, err = capfd.readouterr()
    assert server.requests == [] and err.count("error:") == 1 and problem in err and KEY_ENV in err
    _assert_no_secret_anywhere(tmp_path, out, err, caplog.text)


def test_the_real_process_prints_no_traceback_and_no_key(server, tmp_path):
    """The CLI as a subprocess, so that anything the interpreter itself would print (a traceback) is seen too."""
    import os
    import subprocess
    import sys

    server.default = ("echo_auth_401",)
    env = {**os.environ, KEY_ENV: SECRET + "\r\n"}
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "eval.mtbench", *_judge_setup(tmp_path), "--base-url",
                           server.base_url], env=env, capture_output=True, text=True, timeout=120, cwd=repo)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "HTTP 401" in done.stderr and "Bearer ***" in done.stderr
    _assert_no_secret_anywhere(tmp_path, done.stdout, done.stderr)


def test_an_answer_whose_turns_are_not_a_list_is_refused_before_judging(tmp_path):
    """choices[0].turns as one string was judged one character per turn ("h" as turn 1, "e" as turn 2), silently."""
    record = {"question_id": 81, "answer_id": "a", "model_id": "m", "tstamp": 0,
              "choices": [{"index": 0, "turns": "hello there"}]}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(MTBenchError, match=r"m.jsonl: question 81: choices must be a list of \{\"turns\": "):
        load_answers(path)
    record["choices"] = [{"index": 0, "turns": ["hello", "there"]}]
    path.write_text(json.dumps(record) + "\n")
    assert load_answers(path)[81]["choices"][0]["turns"] == ["hello", "there"]
    assert all(isinstance(a["choices"][0]["turns"], list) for a in load_answers(default_reference_file()).values())
