"""A small stand-in for a mineru-api server, speaking its ``POST /file_parse`` shape.

The real server needs MinerU's models, which cannot be downloaded here.  This
one reads the uploaded PDF with PDFium and answers as mineru-api does: a
JSON body with ``results[<file stem>]`` holding ``md_content``,
``content_list`` (a JSON string) and ``images`` (data URIs).  It records
every request's form fields so tests can check what the client sent.
It binds to 127.0.0.1 on a free port and is stopped by the test.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any

import pypdfium2 as pdfium
from PIL import Image


class FakeMineru:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.requests: list[dict[str, Any]] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeMineru:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, fields: dict[str, str], name: str, pdf: bytes) -> dict[str, Any]:
        stem = PurePosixPath(name).stem
        doc = pdfium.PdfDocument(pdf)
        first = int(fields.get("start_page_id", "0"))
        last = min(int(fields.get("end_page_id", "99999")), len(doc) - 1)
        items: list[dict[str, Any]] = []
        md = [f"# {stem} (parsed by fake MinerU)"]
        for i in range(first, last + 1):
            tp = doc[i].get_textpage()
            text = " ".join(tp.get_text_range().split())
            items.append({"type": "text", "text": text, "page_idx": i, "bbox": [0, 0, 1000, 1000]})
            md.append(text)
        doc.close()
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
        jpg = base64.b64encode(buf.getvalue()).decode()
        items.append(
            {
                "type": "image",
                "img_path": "images/fig0.jpg",
                "image_caption": [],
                "image_footnote": [],
                "page_idx": first,
                "bbox": [10, 10, 20, 20],
            }
        )
        md.append("![](images/fig0.jpg)")
        result = {"md_content": "\n\n".join(md) + "\n"}
        if fields.get("return_content_list") == "true":
            result["content_list"] = json.dumps(items)
        if fields.get("return_images") == "true":
            result["images"] = {"fig0.jpg": f"data:image/jpeg;base64,{jpg}"}
        return {"backend": fields.get("backend"), "version": "fake-2.5", "results": {stem: result}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if self.path != "/file_parse":
                    self._send(404, {"detail": "Not Found"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                ctype = self.headers.get("Content-Type", "")
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + raw
                )
                fields: dict[str, str] = {}
                files: list[tuple[str, bytes]] = []
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    filename = part.get_filename()
                    payload = part.get_payload(decode=True) or b""
                    if filename:
                        files.append((filename, payload))
                    else:
                        fields[str(name)] = payload.decode()
                fake.requests.append({"fields": fields, "files": [f for f, _ in files]})
                if fake.fail:
                    self._send(500, {"error": "Failed to process file: CUDA out of memory"})
                    return
                if len(files) != 1:
                    self._send(400, {"error": "expected one file"})
                    return
                self._send(200, fake.answer(fields, files[0][0], files[0][1]))

        return Handler
