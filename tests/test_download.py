"""`gmptl download` against a local HTTP server: checksum, resume after a broken transfer, unpack."""

import hashlib
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest
import soundfile as sf

from gmptl.__main__ import main
from gmptl.corpora import load_corpus


def ravdess_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for actor in (1, 2):
            for emotion in (1, 5):
                wav = io.BytesIO()
                sf.write(wav, (0.1 * np.random.default_rng(actor * 10 + emotion).standard_normal(4800))
                         .astype(np.float32), 48000, format="WAV")
                z.writestr(f"Actor_{actor:02d}/03-01-{emotion:02d}-01-01-01-{actor:02d}.wav", wav.getvalue())
    return buf.getvalue()


class Server:
    """Serves one file with Range support; ``break_after`` cuts the next transfer after that many bytes."""

    def __init__(self, data: bytes):
        self.data, self.break_after, self.requests = data, None, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                start = 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                outer.requests.append(start)
                body = outer.data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.break_after is not None:
                    body, outer.break_after = body[:outer.break_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the line drops mid-transfer
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/Audio_Speech_Actors_01-24.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server(ravdess_zip())
    yield s
    s.httpd.shutdown()


def test_download_resumes_verifies_and_unpacks(server, tmp_path, capsys):
    md5 = hashlib.md5(server.data).hexdigest()
    server.break_after = len(server.data) // 3
    argv = ["download", "ravdess", "--dest", str(tmp_path), "--url", server.url, "--md5", md5]
    with pytest.raises(SystemExit):
        main(argv)
    assert "run the same command again to resume" in capsys.readouterr().err
    assert main(argv) == 0
    assert server.requests == [0, len(server.data) // 3], "the second request continues where the first broke"
    corpus = load_corpus("ravdess", tmp_path)
    assert len(corpus.utterances) == 4 and corpus.labels[0] == "neutral"
    assert main(argv) == 0 and len(server.requests) == 2, "a finished download is not fetched again"


def test_checksum_mismatch_is_refused(server, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["download", "ravdess", "--dest", str(tmp_path), "--url", server.url, "--md5", "0" * 32])
    assert "differs from the published" in capsys.readouterr().err
    assert not (tmp_path / "Actor_01").exists() and (tmp_path / "Audio_Speech_Actors_01-24.zip.bad").exists()


def test_unreachable_server_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["download", "ravdess", "--dest", str(tmp_path), "--url", "http://127.0.0.1:9/nothing.zip"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect" in err[0]
