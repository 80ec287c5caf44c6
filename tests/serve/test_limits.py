"""Limits that hold before memory is spent: bodies refused on Content-Length and cut off while
streaming, decompression bombs and huge PNGs refused without memory growth, decoding off the
event loop, and concurrent uploads that never corrupt a mask."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from service_helpers import free_port, npy, paal_serve, png, request

from paal_ray.runs.oracle import MaskError
from paal_ray.serve import limits


def gzip_bomb(header: bytes, gib: float) -> bytes:
    """A valid gzip stream: ``header`` then ``gib`` GiB of zeros, in ~1 MB per GiB (built from one
    fully flushed 1 MiB block repeated, so it takes seconds, not minutes)."""
    block = bytes(2**20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    rep = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    n = int(gib * 1024)
    crc = zlib.crc32(header)
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    size = (len(header) + n * 2**20) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + rep * n + c.flush() + struct.pack("<II", crc, size)


def nifti_header(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\x00" * 4


def png_bomb(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A valid grey PNG of zeros, written row by row (never holding the image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    c = zlib.compressobj(9)
    row = bytes(1 + width * bit_depth // 8)
    idat = b"".join(c.compress(row) for _ in range(height)) + c.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return limits.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_the_issues_bombs_are_refused_before_decoding(monkeypatch):
    """The issue's 3 MB .nii.gz (here 1 GiB in 1 MB) and its 280 KB 12000 x 12000 16-bit PNG,
    for a 256 x 256 slice: refused with a reason, peak traced memory a few MB, no pixel decoded."""
    shape = (256, 256)
    gz = gzip_bomb(nifti_header((16384, 16384)), gib=1.0)
    assert len(gz) < 1.2e6
    tracemalloc.start()
    try:
        with pytest.raises(MaskError, match="inflates to more than 1,114,112 bytes"):
            limits.decode_mask(gz, "nii.gz", shape, "upload")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"decompressing the bomb peaked at {peak:,} bytes"

    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    big = png_bomb(12000, 12000)
    assert len(big) < 400_000
    with pytest.raises(MaskError, match=r"mask shape \[12000, 12000\] does not match the slice's shape \[256, 256\]"):
        limits.decode_mask(big, "png", shape, "upload")
    # A .npy header announcing a huge array, and a NIfTI header of the wrong shape: refused on the header.
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
    with pytest.raises(MaskError, match=r"mask shape \[100000, 100000\]"):
        limits.decode_mask(huge.getvalue() + bytes(64), "npy", shape, "upload")
    with pytest.raises(MaskError, match=r"mask shape \[512, 512\]"):
        limits.decode_mask(nifti_header((512, 512)) + bytes(64), "nii", shape, "upload")
    with pytest.raises(MaskError, match="pickled data is refused"):
        limits.decode_mask(npy(np.array([{"a": 1}], dtype=object)), "npy", shape, "upload")
    assert limits.mask_body_limit(shape, 64 * 2**20) == 16 * 256 * 256 + 64 * 2**10


def test_masks_decode_in_every_format_and_text_chunks_are_dropped():
    mask = np.zeros((8, 6), np.uint8)
    mask[2:5, 1:3] = 2
    buf = io.BytesIO()
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 10_000, zip=True)
    Image.fromarray(mask).save(buf, format="PNG", pnginfo=info)
    nii = nib.Nifti1Image(mask, np.eye(4)).to_bytes()
    for body, fmt in [(buf.getvalue(), "png"), (npy(mask), "npy"), (nii, "nii"), (zlib.compress(nii, wbits=31), "nii.gz")]:
        assert np.array_equal(np.asarray(limits.decode_mask(body, fmt, (8, 6), "u")).reshape(8, 6), mask), fmt
    assert b"zTXt" not in limits.png_critical_chunks(buf.getvalue(), (8, 6), "u")
    two_members = zlib.compress(nii[:100], wbits=31) + zlib.compress(nii[100:], wbits=31)
    assert limits.gunzip_bounded(two_members, len(nii), "u") == nii
    with pytest.raises(MaskError, match="truncated gzip"):
        limits.gunzip_bounded(zlib.compress(nii, wbits=31)[:-20], len(nii), "u")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _raw(port: int, head: str, body_chunks=(), timeout: float = 20) -> tuple[int, int]:
    """Send a request head and then body chunks until the server answers: (status, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode())
        sent = 0
        s.setblocking(False)
        reply = b""
        for chunk in body_chunks:
            try:
                reply += s.recv(65536)
            except BlockingIOError:
                pass
            if reply:
                break
            try:
                s.sendall(chunk)
                sent += len(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
        s.setblocking(True)
        deadline = time.monotonic() + timeout
        while b"\r\n" not in reply and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1]), sent


def test_bodies_are_capped_before_memory_is_spent(workspace, tmp_path):
    ws, _ = workspace
    with paal_serve(ws, log=tmp_path / "log") as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        status, body = request(f"{base}/runs/human/selection")
        sids = [s["slice_id"] for s in __import__("json").loads(body)["slices"]]
        url = f"/runs/human/masks/{sids[0]}?format=png"
        assert request(base + url, method="PUT", data=png(np.ones((32, 32))))[0] == 200  # warm up decoders
        rss = _peak_rss(proc.pid)

        # An announced 10 GB body: 413 at once, though not a byte of it is sent.
        head = f"PUT {url} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000000000\r\n\r\n"
        assert _raw(port, head) == (413, 0)
        # 3 MB announced for a 32 x 32 slice (at most 80 KiB in any format): refused before it is read.
        assert _raw(port, head.replace("10000000000", str(3 * 2**20))) == (413, 0)
        # A chunked body announces nothing: cut off by the running cap, long before 1 GiB is sent.
        chunked = f"PUT {url} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        piece = b"%x\r\n" % 2**16 + bytes(2**16) + b"\r\n"
        status, sent = _raw(port, chunked, (piece for _ in range(2**14)))
        assert status == 413 and sent < 32 * 2**20, sent
        # Bombs that pass the body cap: a .nii.gz inflating to ~78 MB, a 6000 x 6000 PNG (36 MB decoded).
        gz = gzip_bomb(nifti_header((4096, 4096)), gib=0.075)
        assert len(gz) < limits.mask_body_limit((32, 32), 2**30)
        status, text = request(f"{base}/runs/human/masks/{sids[0]}?format=nii.gz", method="PUT", data=gz)
        assert status == 422 and b"inflates to more than" in text
        big = png_bomb(6000, 6000, bit_depth=8)
        status, text = request(base + url, method="PUT", data=big)
        assert status == 422 and b"mask shape [6000, 6000] does not match" in text
        growth = _peak_rss(proc.pid) - rss
        assert growth < 25 * 2**20, f"the server's peak memory grew by {growth:,} bytes"
        assert request(f"{base}/health")[0] == 200

        # Concurrent uploads of different masks for one slice: the stored mask is one of them, whole.
        bodies = [npy(np.full((32, 32), k % 3, np.uint8)) for k in range(8)]
        results = []
        threads = [threading.Thread(target=lambda b=b: results.append(
            request(f"{base}/runs/human/masks/{sids[1]}?format=npy", method="PUT", data=b)[0])) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 8
        stored = np.load(ws / "human" / "rounds" / "000" / "inbox" / f"{sids[1].replace('/', '__')}.npy")
        assert stored.shape == (32, 32) and len(np.unique(stored)) == 1


def test_decoding_runs_off_the_event_loop(workspace, monkeypatch):
    """While one upload is being decoded, the server answers other requests."""
    import uvicorn

    from paal_ray.serve.app import create_app

    ws, _ = workspace
    entered, release = threading.Event(), threading.Event()
    real = limits.decode_mask

    def slow_decode(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(limits, "decode_mask", slow_decode)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(str(ws)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        sid = __import__("json").loads(request(f"{base}/runs/human/selection")[1])["slices"][0]["slice_id"]
        upload: list[int] = []
        t = threading.Thread(target=lambda: upload.append(request(f"{base}/runs/human/masks/{sid}?format=png",
                                                                   method="PUT", data=png(np.ones((32, 32))))[0]))
        t.start()
        assert entered.wait(30), "the upload never reached decoding"
        assert request(f"{base}/health", timeout=5)[0] == 200  # would time out if decoding held the loop
        assert request(f"{base}/runs", timeout=5)[0] == 200
        release.set()
        t.join(30)
        assert upload == [200]
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)
