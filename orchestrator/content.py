"""Content models: the real bytes of simulated pages.

Principle 1 of the design says a page's compressed size always comes from
running lz4 on that page's actual bytes. So the simulator never carries a
"compression ratio" per page; it carries a content model that can produce the
4096 bytes of any page at any version, and the nodes compress those.

Each model is deterministic in ``(seed, page_id, version)``. The engine bumps
the version when a workload writes a page, so a written page gets new
contents (for pooled classes, usually another template, hence another
compressibility sample) while keeping its class.

Speed shapes the implementation: the engine demotes over 100,000 pages per
second, so producing a page may cost a microsecond or two, not a numpy call.
Each class therefore builds a small pool of template pages once (seeded, and
cached per process), and a page is a template chosen by a cheap integer hash
of ``(page_id, version)`` with a 16-byte stamp (page id and version) written
at a per-template cacheline. Pages are thus distinct real bytes that compress
like their template. Zero pages carry no stamp (they must stay zero); a
same-filled page is one hash-derived non-zero word repeated.

Classes and what lz4 measures on them (`measure`: ``lz4.block.compress(page,
store_size=False)``, an output of 4096 bytes or more counted as 4096; mean =
total original / total compressed; 20,000 pages, seed 0; other seeds agree
within ~0.05):

==================  ========================================================  ====  ===========
class / preset      content                                                   mean  quartiles
==================  ========================================================  ====  ===========
``zero``            all zero                                                  158   158
``same-filled``     one non-zero 8-byte word repeated                         124   124
``text``            log, C-like source and prose lines (vocabulary 512)       2.56  2.31 - 3.72
``heap``            C structs: pointers, small ints, padding, strings         2.74  2.53 - 2.97
``random``          uniform random bytes                                      1.00  1.00 - 1.00
``ratio4``          hash table, 14 of 64 buckets random                       4.02  3.98 - 4.06
``ratio2``          hash table, 29 of 64 buckets random                       2.04  2.03 - 2.06
``incompressible``  deflate stream slices (compressed files)                  1.00  1.00 - 1.00
``default``         `DEFAULT_MIX`: 15 % zero, 0.5 % same-filled, 11 % random  2.60  2.37 - 3.64
==================  ========================================================  ====  ===========

Compressibility is tunable through content, never through a ratio:
`TextContent` takes a vocabulary size, `HeapContent` a share of high-entropy
fields, `BlendContent` the share of random cachelines (the ratio presets are
blends). `make_content` builds any of them from a scenario spec; the tests
re-measure the table's figures.
"""

from __future__ import annotations

import bisect
import enum
import functools
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import lz4.block
import numpy as np
import numpy.typing as npt

PAGE_SIZE = 4096
CACHELINE = 64
_WORDS_PER_PAGE = PAGE_SIZE // 8
_LINES_PER_PAGE = PAGE_SIZE // CACHELINE

# Constants of splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom
# number generators", OOPSLA 2014). Pure-int arithmetic on them costs a few
# hundred nanoseconds, far less than any numpy call on a scalar.
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_VERSION_MUL = 0xD1B54A32D192ED03  # an odd constant decorrelating versions from ids

DEFAULT_POOL_SIZE = 128


def splitmix64(z: int) -> int:
    """One splitmix64 step: a well-mixed 64-bit value from any integer."""
    z = (z + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def _derive_seed(seed: int, label: str) -> int:
    """A 64-bit seed for one component, stable across runs and Python versions."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"content seed must be an integer, got {seed!r}")
    z = seed & _M64
    for byte in label.encode():
        z = splitmix64(z ^ byte)
    return splitmix64(z)


class PageClass(enum.IntEnum):
    """What a page holds; returned by `ContentModel.page_class`.

    Named presets have their own member so a mix of presets can be told
    apart; a custom-tuned model reports its family (a custom blend is
    `BLEND`, a text with another vocabulary is still `TEXT`).
    """

    ZERO = 0
    SAME_FILLED = 1
    TEXT = 2
    HEAP = 3
    RANDOM = 4
    RATIO4 = 5
    RATIO2 = 6
    INCOMPRESSIBLE = 7
    BLEND = 8
    CORPUS = 9  # a data page from a page corpus (zero / same-filled ones report those)


@runtime_checkable
class ContentModel(Protocol):
    """Produces the bytes of any page of a workload's footprint.

    ``page`` must return exactly `PAGE_SIZE` bytes and be a pure function of
    the model's seed, ``page_id`` and ``version``.
    """

    @property
    def name(self) -> str: ...

    def page(self, page_id: int, version: int = 0) -> bytes: ...

    def page_class(self, page_id: int) -> int: ...

    def classes(self, page_ids: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int8]: ...


# --------------------------------------------------------------------------
# Template generation. Runs once per (class, parameters, seed) and is cached;
# it may be slow-ish Python. Randomness comes from PCG64's raw output, whose
# stream numpy guarantees across versions (Generator methods are not).


class _Stream:
    """Seeded source of raw randomness for template generation."""

    def __init__(self, seed: int) -> None:
        self._bits = np.random.PCG64(seed)

    def raw(self, n: int) -> npt.NDArray[np.uint64]:
        return np.asarray(self._bits.random_raw(n), dtype=np.uint64)

    def randbytes(self, n: int) -> bytes:
        return self.raw((n + 7) // 8).tobytes()[:n]

    def floats(self, n: int) -> list[float]:
        floats: list[float] = ((self.raw(n) >> np.uint64(11)) * (1.0 / (1 << 53))).tolist()
        return floats

    def below(self, bound: int) -> int:
        return int(self.raw(1)[0]) % bound


_WORD_TEXT = """
the of and to in is for on that with as by at from this be are was it or an not have
which all but can has will more one new data can we if may other some time into only
page memory node cache buffer request response error warning value index table file
user server client thread process queue lock event entry state count size length key
read write open close start stop send receive update delete create insert select find
load store commit flush sync alloc free map unmap init exit check parse handle return
config option module device driver kernel socket stream packet frame block chunk slot
list tree hash array vector string object record field type class struct pointer ref
first last next prev head tail left right top bottom high low min max total current
timeout retry failed success ready busy idle pending active closed done running wait
network disk storage cpu host cluster region zone pool limit quota policy rule group
service session token account order payment item product customer report job task
message log trace debug info metric counter gauge latency bandwidth rate ratio score
because however while when where after before during between through without under
system program application function method variable parameter result status code
people year way day man thing woman life child world school state family student
hand part place case week company number point government home water room mother
area money story fact month lot right study book eye word business issue side kind
good great little own old big long high different small large next early young
important public bad same able make know take see come think look want give use
"""
_BASE_WORDS = tuple(_WORD_TEXT.split())

_SYLLABLE_TEXT = (
    "ka ri to na me su lo pe an el or in at us ve ra no di ce mo ti ba lu fe go "
    "qua zen tri pol mar vel dor sen cal bri"
)
_SYLLABLES = tuple(_SYLLABLE_TEXT.split())


@functools.lru_cache(maxsize=16)
def _vocabulary(size: int) -> tuple[str, ...]:
    """The first `size` words: real words first, then pronounceable pseudo-words.

    Order matters: word frequencies are Zipfian over this order, so small
    vocabularies keep the most common (shortest, most repeated) words.
    """
    seen: dict[str, None] = dict.fromkeys(_BASE_WORDS)
    words = list(seen)
    i = 0
    while len(words) < size:
        # 2-4 syllables picked by a hash of the index: deterministic, varied.
        h = splitmix64(i)
        w = "".join(_SYLLABLES[(h >> (8 * j)) % len(_SYLLABLES)] for j in range(2 + h % 3))
        if w not in seen:
            seen[w] = None
            words.append(w)
        i += 1
    return tuple(words[:size])


def _zipf_cdf(n: int, alpha: float = 1.0) -> list[float]:
    weights = [1.0 / (r + 1) ** alpha for r in range(n)]
    total = sum(weights)
    acc = 0.0
    cdf = []
    for w in weights:
        acc += w / total
        cdf.append(acc)
    cdf[-1] = 1.0
    return cdf


_LEVELS = ("INFO ", "INFO ", "INFO ", "DEBUG", "WARN ", "ERROR")
_CODE_FORMS = (
    "{i}if ({a}->{b} == {n}) {{",
    "{i}return {a}_{b}({c}, {n});",
    "{i}{a}_{b} = {c}[{n}];",
    "{i}int {a} = {b}_{c} + {n};",
    "{i}}}",
    "{i}}}",
    "{i}// {a} {b} {c} the {a}",
    "{i}for (i = 0; i < {n}; i++) {{",
    "{i}{a}->{b} = {c};",
    "{i}static int {a}_{b}(struct {c} *{a});",
    "{i}}} else {{",
    "{i}return 0;",
    "{i}break;",
    "{i}goto out;",
    "{i}err = -EINVAL;",
    "",
)


def _text_page(stream: _Stream, vocab: Sequence[str], cdf: Sequence[float], style: float) -> bytes:
    """One page of ASCII lines in one style, as a file or log buffer would be.

    A page of a real buffer usually holds one kind of text, so the style is
    set per page by ``style`` in [0, 1): half logs, 30 % C-like source, 20 %
    prose (the pool stratifies it, so every seed gets the same mix). Logs
    are printed from a few format strings made of common words, source code
    reuses keywords, layout and a few identifiers, prose repeats phrases of
    Zipf-distributed words. In every style the variable words come from the
    vocabulary, so its size sets how often a page repeats itself, which is
    all lz4 can exploit.
    """
    u = iter(stream.floats(4096))
    n_vocab = len(vocab)
    n_common = min(n_vocab, 64)

    def word() -> str:  # Zipf over the whole vocabulary
        return vocab[min(bisect.bisect_left(cdf, next(u)), n_vocab - 1)]

    def any_word() -> str:  # uniform: names, identifiers, values
        return vocab[int(next(u) * n_vocab)]

    def common() -> str:
        return vocab[int(next(u) * n_common)]

    def num(hi: int) -> int:
        return int(next(u) * hi)

    lines: list[str] = []
    size = 0
    if style < 0.5:
        # A log buffer: a few format strings and modules, monotonic timestamps.
        formats = [
            " ".join(common() if next(u) < 0.85 else "{}" for _ in range(3 + num(8)))
            for _ in range(2 + num(4))
        ]
        modules = [f"{common()}.{common()}" for _ in range(1 + num(3))]
        day, t_ms = 1 + num(28), num(86_400_000)
        while size < PAGE_SIZE:
            t_ms += num(100)
            s, ms = divmod(t_ms, 1000)
            m, s = divmod(s, 60)
            h, m = divmod(m, 60)
            fmt = formats[num(len(formats))]
            slots = (
                any_word() if next(u) < 0.6 else str(num(10_000)) for _ in range(fmt.count("{}"))
            )
            line = (
                f"2026-01-{day:02d}T{h % 24:02d}:{m:02d}:{s:02d}.{ms:03d}Z "
                f"{_LEVELS[num(len(_LEVELS))]} [{modules[num(len(modules))]}] {fmt.format(*slots)}"
            )
            lines.append(line)
            size += len(line) + 1
    elif style < 0.8:
        # A function body names a few identifiers again and again.
        idents = [any_word() for _ in range(12)]

        def ident() -> str:
            return idents[num(12)] if next(u) < 0.85 else any_word()

        while size < PAGE_SIZE:
            form = _CODE_FORMS[num(len(_CODE_FORMS))]
            a, b, c = ident(), ident(), ident()
            line = form.format(i="    " * (1 + num(4)), a=a, b=b, c=c, n=num(64))
            lines.append(line)
            size += len(line) + 1
    else:
        # Prose repeats its phrases ("of the", a name, a term being defined).
        phrases: list[str] = []
        while size < PAGE_SIZE:
            parts = []
            for _ in range(3 + num(5)):
                if phrases and next(u) < 0.3:
                    parts.append(phrases[num(len(phrases))])
                else:
                    phrase = " ".join(word() for _ in range(1 + num(3)))
                    phrases.append(phrase)
                    parts.append(phrase)
            if next(u) < 0.3:
                parts.insert(num(len(parts)), str(num(10_000)))
            line = " ".join(parts)
            line = line[0].upper() + line[1:] + (". " if next(u) < 0.7 else ",")
            lines.append(line)
            size += len(line) + 1
    return ("\n".join(lines) + "\n").encode("ascii")[:PAGE_SIZE]


def _heap_page(stream: _Stream, random_field_share: float) -> bytes:
    """One page of a C heap: malloc'd structs packed one after another.

    Each page uses a handful of struct layouts (a slab holds one type; a heap
    arena a few). Fields are pointers to nearby objects (8-byte aligned and
    sharing their high bytes, so lz4 finds matches across them), small
    integers that are mostly tiny, flags, zero padding, doubles, short
    strings, and a share of high-entropy fields (hashes, random keys) that
    do not compress.
    """
    raw = iter(stream.raw(4 * _WORDS_PER_PAGE + 64).tolist())
    # Objects live in one region of one arena; pointers mostly stay near it.
    region = 0x0000_7F00_0000_0000 | ((next(raw) & 0xFFFF) << 24) | ((next(raw) & 0xFF) << 16)
    words_list = [w for w in _BASE_WORDS if len(w) <= 8]
    # Field kinds, repeated by how common they are in a typical struct.
    kinds = ("ptr",) * 2 + ("small",) * 3 + ("zero",) * 2 + ("flags", "double", "str", "u32pair")
    layouts: list[list[str]] = []
    for _ in range(1 + next(raw) % 4):
        nfields = 3 + next(raw) % 8
        layouts.append(["vtbl"] + [kinds[next(raw) % len(kinds)] for _ in range(nfields)])
    vtables = [(region & ~0xFFFFFF) | ((next(raw) & 0xFFF) << 4) for _ in layouts]
    flag_values = (0, 1, 0x11, 0x80000001)
    threshold = int(random_field_share * 1024)

    out: list[int] = []
    while len(out) < _WORDS_PER_PAGE:
        t = next(raw) % len(layouts)
        fields = layouts[t]
        # glibc chunk header: size | PREV_INUSE, a very repetitive word.
        out.append(((len(fields) + 1) * 8 + 15) & ~15 | 1)
        for f in fields:
            r = next(raw)
            if f == "vtbl":
                out.append(vtables[t])
            elif (r >> 54) < threshold:
                out.append(next(raw))
            elif f == "ptr":
                out.append(0 if r % 3 == 0 else region | ((r >> 8) & 0xFFF0))
            elif f == "small":
                out.append(r % 4 if r & 0x300 else r % 1000)
            elif f == "zero":
                out.append(0)
            elif f == "flags":
                out.append(flag_values[r % len(flag_values)])
            elif f == "double":
                out.append(struct.unpack("<Q", struct.pack("<d", (r % 64) / 4))[0])
            elif f == "u32pair":
                out.append((r % 64) | ((r >> 32) % 4) << 32)
            else:  # str
                s = words_list[r % len(words_list)].encode()
                out.append(int.from_bytes(s.ljust(8, b"\0"), "little"))
    return struct.pack(f"<{_WORDS_PER_PAGE}Q", *out[:_WORDS_PER_PAGE])


def _blend_page(stream: _Stream, random_fraction: float) -> bytes:
    """An open-addressing hash table: empty buckets and buckets holding random keys.

    Empty 64-byte buckets are all alike (an EMPTY marker and zero fields) and
    compress to almost nothing; occupied buckets hold hashes and keys, which
    are random bytes lz4 cannot shrink. The share of occupied buckets is
    exact per page (``round(random_fraction * 64)``), so the page's lz4 size
    is governed by it with a narrow spread: this is how the ratio presets
    hit their targets.
    """
    empty = struct.pack("<QQQ40x", 0xFFFF_FFFF_FFFF_FFFF, 0, stream.below(1 << 16))
    page = bytearray(empty * _LINES_PER_PAGE)
    n_random = round(random_fraction * _LINES_PER_PAGE)
    order = np.argsort(stream.raw(_LINES_PER_PAGE), kind="stable").tolist()
    for line in order[:n_random]:
        page[line * CACHELINE : (line + 1) * CACHELINE] = stream.randbytes(CACHELINE)
    return bytes(page)


@functools.lru_cache(maxsize=64)
def _text_pool(seed: int, vocab_size: int, size: int) -> tuple[bytes, ...]:
    vocab = _vocabulary(vocab_size)
    cdf = _zipf_cdf(vocab_size)
    stream = _Stream(seed)
    return tuple(_text_page(stream, vocab, cdf, (i + 0.5) / size) for i in range(size))


@functools.lru_cache(maxsize=64)
def _heap_pool(seed: int, random_field_share: float, size: int) -> tuple[bytes, ...]:
    stream = _Stream(seed)
    return tuple(_heap_page(stream, random_field_share) for _ in range(size))


@functools.lru_cache(maxsize=64)
def _blend_pool(seed: int, random_fraction: float, size: int) -> tuple[bytes, ...]:
    stream = _Stream(seed)
    return tuple(_blend_page(stream, random_fraction) for _ in range(size))


@functools.lru_cache(maxsize=64)
def _random_pool(seed: int, size: int) -> tuple[bytes, ...]:
    stream = _Stream(seed)
    return tuple(stream.randbytes(PAGE_SIZE) for _ in range(size))


@functools.lru_cache(maxsize=64)
def _deflated_pool(seed: int, size: int) -> tuple[bytes, ...]:
    """Consecutive pages of one deflate stream: what the page cache holds for
    .gz or .png files. The input is word salad, cheap to make; deflate's
    output is near-random whatever text goes in."""
    stream = _Stream(seed)
    vocab = _vocabulary(4096)
    packer = zlib.compressobj(1)  # fastest; its output is as incompressible
    out: list[bytes] = []
    produced = 0
    need = size * PAGE_SIZE + CACHELINE  # skip the stream header
    while produced < need:
        picks = (np.asarray(stream.floats(32_768)) * len(vocab)).astype(np.int64).tolist()
        block = packer.compress(" ".join([vocab[i] for i in picks]).encode())
        out.append(block)
        produced += len(block)
    blob = b"".join(out)[CACHELINE:]
    return tuple(blob[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(size))


# --------------------------------------------------------------------------
# Models.
#
# The per-page hash, shared by every model and by `MixedContent.classes`:
#
#   z = splitmix-style mix of (page_id XOR salt)   -- fixed for a page
#   w = ((z + version * _VERSION_MUL) * _MIX2) mod 2**64   -- per version
#
# A mix picks the class from the top 53 bits of z (so the class never changes
# on write), a pooled class its template from the top bits of w. Two
# multiplications and an xor-shift: about 0.3 us in pure Python.

_STAMP = struct.Struct("<QQ").pack


def _page_hash(page_id: int, salt: int) -> int:
    z = ((page_id ^ salt) * _GOLDEN) & _M64
    return ((z ^ (z >> 31)) * _MIX1) & _M64


def _page_hash_array(page_ids: npt.NDArray[np.integer[Any]], salt: int) -> npt.NDArray[np.uint64]:
    """`_page_hash` over an array, bit-identical to the scalar version."""
    z = (np.asarray(page_ids).astype(np.uint64) ^ np.uint64(salt)) * np.uint64(_GOLDEN)
    return (z ^ (z >> np.uint64(31))) * np.uint64(_MIX1)


def _check_pool_size(pool_size: int) -> int:
    if isinstance(pool_size, bool) or not isinstance(pool_size, int):
        raise ValueError(f"pool_size must be an integer, got {pool_size!r}")
    if pool_size < 1 or pool_size & (pool_size - 1):
        raise ValueError(f"pool_size must be a power of two >= 1, got {pool_size}")
    return pool_size


class _Base:
    """What all models share: a seed, a class, and the page hash."""

    __slots__ = ("_klass", "_name", "_salt", "seed")

    def __init__(self, name: str, klass: PageClass, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"content seed must be an integer, got {seed!r}")
        self._name = name
        self._klass = klass
        self.seed = seed
        self._salt = _derive_seed(seed, "page:" + name)

    @property
    def name(self) -> str:
        return self._name

    def page(self, page_id: int, version: int = 0) -> bytes:
        """The page's bytes; ``page_id`` and ``version`` must lie in [0, 2**64)."""
        page_id, version = int(page_id), int(version)  # numpy scalars would overflow
        return self._render(_page_hash(page_id, self._salt), page_id, version)

    def _render(self, z: int, page_id: int, version: int) -> bytes:
        raise NotImplementedError

    def page_class(self, page_id: int) -> int:
        return int(self._klass)

    def classes(self, page_ids: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int8]:
        return np.full(np.shape(page_ids), int(self._klass), dtype=np.int8)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name} seed={self.seed}>"


class PooledContent(_Base):
    """A class of content served from a pool of template pages.

    ``page`` picks a template from the hash of ``(page_id, version)`` and
    writes a 16-byte stamp (page id and version, little-endian) into it at
    that template's stamp offset, a cacheline chosen per template when the
    pool is built. Every page is thus distinct and compresses like its
    template; a write (new version) usually lands on another template. The
    templates are kept pre-split around the stamp, so a page costs one
    allocation and two copies. Subclasses only build the pool.
    """

    __slots__ = ("_parts", "_pool", "_shift")

    def __init__(self, name: str, klass: PageClass, pool: Sequence[bytes], seed: int) -> None:
        super().__init__(name, klass, seed)
        size = len(pool)
        if size < 1 or size & (size - 1):
            raise ValueError(f"template pool size must be a power of two, got {size}")
        if any(len(t) != PAGE_SIZE for t in pool):
            raise ValueError(f"templates must be exactly {PAGE_SIZE} bytes")
        self._pool = tuple(pool)
        self._shift = 64 - (size.bit_length() - 1)
        parts = []
        for i, t in enumerate(self._pool):
            off = (splitmix64(self._salt ^ i) >> 58) << 6
            parts.append((t[:off], t[off + 16 :]))
        self._parts = tuple(parts)

    @property
    def templates(self) -> tuple[bytes, ...]:
        """The template pool; pages compress like these."""
        return self._pool

    def _render(self, z: int, page_id: int, version: int) -> bytes:
        head, tail = self._parts[(((z + version * _VERSION_MUL) * _MIX2) & _M64) >> self._shift]
        return head + _STAMP(page_id, version) + tail

    def page(self, page_id: int, version: int = 0) -> bytes:
        """The page's bytes; ``page_id`` and ``version`` must lie in [0, 2**64)."""
        # `_page_hash` and `_render` inlined: this is the engine's hottest call.
        # int(): numpy scalars would overflow in the hash arithmetic.
        page_id, version = int(page_id), int(version)
        z = ((page_id ^ self._salt) * _GOLDEN) & _M64
        z = ((z ^ (z >> 31)) * _MIX1) & _M64
        head, tail = self._parts[(((z + version * _VERSION_MUL) * _MIX2) & _M64) >> self._shift]
        return head + _STAMP(page_id, version) + tail


class TextContent(PooledContent):
    """ASCII text: logs, C-like source and prose over a vocabulary.

    ``vocab_size`` tunes compressibility through the content itself: a small
    vocabulary repeats words (and lz4 finds matches), a large one does not.
    Measured lz4 means (seed 0, 5,000 pages): vocabulary 8 ~2.9, 64 ~2.7,
    512 (the default) ~2.57, 65536 ~2.5: a gentle knob, because log
    timestamps and code layout compress whatever the words. Logs compress
    best (~3.7), source code ~2.4, prose least (~1.6), as real text does.
    For a wider range use `BlendContent`.
    """

    __slots__ = ("vocab_size",)

    def __init__(
        self,
        seed: int = 0,
        *,
        vocab_size: int = 512,
        pool_size: int = DEFAULT_POOL_SIZE,
        name: str | None = None,
        klass: PageClass = PageClass.TEXT,
    ) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"text vocab_size must be an integer, got {vocab_size!r}")
        if not 8 <= vocab_size <= 65536:
            raise ValueError(f"text vocab_size must be in [8, 65536], got {vocab_size}")
        self.vocab_size = vocab_size
        label = name or ("text" if vocab_size == 512 else f"text(vocab_size={vocab_size})")
        pool = _text_pool(_derive_seed(seed, "text"), vocab_size, _check_pool_size(pool_size))
        super().__init__(label, klass, pool, seed)


class HeapContent(PooledContent):
    """Heap-like binary: C structs with pointers, small ints, padding, strings.

    ``random_field_share`` is the share of fields holding high-entropy values
    (hashes, random keys, encrypted tokens); raising it lowers the ratio.
    Measured lz4 means (seed 0, 5,000 pages): share 0 ~2.8, 0.02 (the
    default) ~2.75, 0.1 ~2.4, 0.2 ~2.1, 0.5 ~1.6, 1.0 ~1.2.
    """

    __slots__ = ("random_field_share",)

    def __init__(
        self,
        seed: int = 0,
        *,
        random_field_share: float = 0.02,
        pool_size: int = DEFAULT_POOL_SIZE,
        name: str | None = None,
        klass: PageClass = PageClass.HEAP,
    ) -> None:
        share = _unit_float("heap random_field_share", random_field_share)
        self.random_field_share = share
        label = name or ("heap" if share == 0.02 else f"heap(random_field_share={share:g})")
        pool = _heap_pool(_derive_seed(seed, "heap"), share, _check_pool_size(pool_size))
        super().__init__(label, klass, pool, seed)


class BlendContent(PooledContent):
    """Hash-table pages with a given share of buckets holding random keys.

    The most direct content-level knob on compressibility: each random
    64-byte bucket costs lz4 about 68 bytes and the empty ones almost
    nothing, so the ratio is about ``1 / (1.06 * random_fraction + 0.012)``
    (measured: 14/64 -> 4.0, 29/64 -> 2.04, 48/64 -> 1.28). The share is
    rounded to whole cachelines. The ``ratio4`` and ``ratio2`` presets are
    instances of it.
    """

    __slots__ = ("random_fraction",)

    def __init__(
        self,
        seed: int = 0,
        *,
        random_fraction: float = 0.5,
        pool_size: int = DEFAULT_POOL_SIZE,
        name: str | None = None,
        klass: PageClass = PageClass.BLEND,
    ) -> None:
        frac = _unit_float("blend random_fraction", random_fraction)
        self.random_fraction = frac
        label = name or f"blend(random_fraction={frac:g})"
        pool = _blend_pool(_derive_seed(seed, "blend"), frac, _check_pool_size(pool_size))
        super().__init__(label, klass, pool, seed)


class RandomContent(PooledContent):
    """Uniform random bytes: encrypted data; lz4 cannot shrink it.

    Pages of one template differ only in their stamps; lz4 works within a
    page, so that does not make them compressible.
    """

    __slots__ = ()

    def __init__(self, seed: int = 0, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        pool = _random_pool(_derive_seed(seed, "random"), _check_pool_size(pool_size))
        super().__init__("random", PageClass.RANDOM, pool, seed)


class DeflatedContent(PooledContent):
    """Slices of deflate streams: already-compressed data (the ``incompressible`` preset).

    Unlike `RandomContent` this is real compressed data (block headers,
    Huffman codes); lz4 finds nothing in it either (measured: no page of
    20,000 shrinks).
    """

    __slots__ = ()

    def __init__(self, seed: int = 0, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        pool = _deflated_pool(_derive_seed(seed, "deflate"), _check_pool_size(pool_size))
        super().__init__("incompressible", PageClass.INCOMPRESSIBLE, pool, seed)


_ZERO_PAGE = bytes(PAGE_SIZE)


class ZeroContent(_Base):
    """All-zero pages. They carry no stamp: a zero page must stay zero for the
    swap layer's zero-page detection (KERNEL.md, zswap store step 1)."""

    __slots__ = ()

    def __init__(self, seed: int = 0) -> None:
        super().__init__("zero", PageClass.ZERO, seed)

    def _render(self, z: int, page_id: int, version: int) -> bytes:
        return _ZERO_PAGE

    def page(self, page_id: int, version: int = 0) -> bytes:
        return _ZERO_PAGE


class SameFilledContent(_Base):
    """Pages of one non-zero 8-byte word repeated, the word hashed from (page, version).

    This is what zswap's same-filled detection looks for; a write gives the
    page a new word, as a memset of the buffer to a new pattern would.
    """

    __slots__ = ()

    def __init__(self, seed: int = 0) -> None:
        super().__init__("same-filled", PageClass.SAME_FILLED, seed)

    def _render(self, z: int, page_id: int, version: int) -> bytes:
        w = ((z + version * _VERSION_MUL) * _MIX2) & _M64
        return ((w ^ (w >> 29)) | 1).to_bytes(8, "little") * _WORDS_PER_PAGE


def _unit_float(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return v


# Named single-class specs. The ratio presets' bucket shares were chosen by
# measurement so lz4's mean lands on the target (see the module table).
_NAMED: dict[str, Any] = {
    "zero": ZeroContent,
    "same-filled": SameFilledContent,
    "text": TextContent,
    "heap": HeapContent,
    "random": RandomContent,
    "ratio4": functools.partial(
        BlendContent, random_fraction=14 / 64, name="ratio4", klass=PageClass.RATIO4
    ),
    "ratio2": functools.partial(
        BlendContent, random_fraction=29 / 64, name="ratio2", klass=PageClass.RATIO2
    ),
    "incompressible": DeflatedContent,
}

CONTENT_NAMES: tuple[str, ...] = (*_NAMED, "default")

# Calibrated against KERNEL.md: lz4 over desktop memory measures 2.58-2.63,
# and 10-20 % of swapped pages are same-filled, under 1 % of those non-zero
# (here 15 % same-filled, of which 1/30 non-zero). Measured: ~2.6.
DEFAULT_MIX: dict[str, float] = {
    "zero": 0.145,
    "same-filled": 0.005,
    "text": 0.25,
    "heap": 0.49,
    "random": 0.11,
}


def named_content(name: str, seed: int = 0) -> ContentModel:
    """The single-class model for a class or preset name ("text", "ratio4", ...)."""
    try:
        factory = _NAMED[name]
    except (KeyError, TypeError):
        known = ", ".join(CONTENT_NAMES)
        raise ValueError(f"unknown content {name!r} (expected one of: {known})") from None
    model: ContentModel = factory(seed)
    return model


class MixedContent:
    """Pages of several classes in given proportions.

    A page's class is a pure function of ``(seed, page_id)``: the top 53 bits
    of the page hash are compared with cumulative thresholds. So classes need
    no storage (principle 5), `classes` computes them for millions of pages
    at numpy speed, and a write (new version) changes a page's bytes but not
    its class.
    """

    __slots__ = ("_klasses", "_models", "_name", "_proportions", "_salt", "_thresholds", "seed")

    def __init__(
        self, proportions: Mapping[str, float], seed: int = 0, *, name: str | None = None
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"content seed must be an integer, got {seed!r}")
        self._proportions = _check_proportions(proportions)
        self.seed = seed
        self._salt = _derive_seed(seed, "mix-class")
        names = [n for n, p in self._proportions.items() if p > 0]
        total = math.fsum(self._proportions[n] for n in names)
        acc = 0.0
        thresholds = []
        for n in names[:-1]:
            acc += self._proportions[n] / total
            thresholds.append(min(round(acc * (1 << 53)), 1 << 53))
        self._thresholds = thresholds
        models = [named_content(n, _derive_seed(seed, "mix:" + n)) for n in names]
        self._models: tuple[_Base, ...] = tuple(m for m in models if isinstance(m, _Base))
        self._klasses = np.array([m.page_class(0) for m in self._models], dtype=np.int8)
        self._name = name or (
            "mix(" + ", ".join(f"{n}={p:g}" for n, p in self._proportions.items()) + ")"
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def proportions(self) -> dict[str, float]:
        """The proportions as given (not normalised)."""
        return dict(self._proportions)

    def page(self, page_id: int, version: int = 0) -> bytes:
        """The page's bytes; ``page_id`` and ``version`` must lie in [0, 2**64)."""
        page_id, version = int(page_id), int(version)  # numpy scalars would overflow
        z = ((page_id ^ self._salt) * _GOLDEN) & _M64
        z = ((z ^ (z >> 31)) * _MIX1) & _M64
        return self._models[bisect.bisect_right(self._thresholds, z >> 11)]._render(
            z, page_id, version
        )

    def page_class(self, page_id: int) -> int:
        z = _page_hash(int(page_id), self._salt)
        return int(self._klasses[bisect.bisect_right(self._thresholds, z >> 11)])

    def classes(self, page_ids: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int8]:
        z = _page_hash_array(page_ids, self._salt)
        thresholds = np.asarray(self._thresholds, dtype=np.uint64)
        return self._klasses[np.searchsorted(thresholds, z >> np.uint64(11), side="right")]

    def __repr__(self) -> str:
        return f"<MixedContent {self._name} seed={self.seed}>"


def _check_proportions(proportions: object) -> dict[str, float]:
    if not isinstance(proportions, Mapping) or not proportions:
        raise ValueError(
            f"content mix must be a non-empty table of class = share, got {proportions!r}"
        )
    out: dict[str, float] = {}
    for key, value in proportions.items():
        if key not in _NAMED:
            known = ", ".join(_NAMED)
            raise ValueError(f"content mix: unknown class {key!r} (expected one of: {known})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"content mix: share of {key!r} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"content mix: share of {key!r} must be finite and >= 0, got {value!r}"
            )
        out[key] = float(value)
    if math.fsum(out.values()) <= 0:
        raise ValueError(
            "content mix: shares sum to zero; give at least one class a positive share"
        )
    return out


def default_content(seed: int = 0) -> MixedContent:
    """The desktop-calibrated mix, `DEFAULT_MIX`."""
    return MixedContent(DEFAULT_MIX, seed, name="default")


_TUNABLE: dict[str, tuple[Any, frozenset[str]]] = {
    "text": (TextContent, frozenset({"vocab_size"})),
    "heap": (HeapContent, frozenset({"random_field_share"})),
    "blend": (BlendContent, frozenset({"random_fraction"})),
}


def make_content(spec: str | Mapping[str, Any], seed: int = 0) -> ContentModel:
    """Build a content model from a scenario's ``content`` value.

    Accepted forms::

        content = "default"                            # the calibrated mix
        content = "ratio4"                             # a named class or preset
        content = { mix = { text = 0.3, heap = 0.5, zero = 0.2 } }
        content = { class = "text", vocab_size = 64 }  # a tuned class
        content = { class = "blend", random_fraction = 0.3 }
        content = { corpus = "app.corpus" }            # real pages (tiersim capture)

    Raises ValueError naming the offending value.
    """
    if isinstance(spec, str):
        if spec == "default":
            return default_content(seed)
        return named_content(spec, seed)
    if not isinstance(spec, Mapping):
        raise ValueError(f"content must be a name or a table, got {spec!r}")
    if "corpus" in spec:
        extra = sorted(map(str, set(spec) - {"corpus"}))
        if extra:
            raise ValueError(f"content: unexpected key(s) {', '.join(extra)} beside 'corpus'")
        from .corpus import corpus_content

        return corpus_content(spec["corpus"], seed)
    if "mix" in spec:
        extra = sorted(map(str, set(spec) - {"mix"}))
        if extra:
            raise ValueError(f"content: unexpected key(s) {', '.join(extra)} beside 'mix'")
        return MixedContent(spec["mix"], seed)
    if "class" in spec:
        klass = spec["class"]
        rest = {k: v for k, v in spec.items() if k != "class"}
        if isinstance(klass, str) and klass in _TUNABLE:
            factory, allowed = _TUNABLE[klass]
            bad = sorted(map(str, set(rest) - allowed))
            if bad:
                raise ValueError(
                    f"content class {klass!r}: unknown parameter(s) {', '.join(bad)} "
                    f"(accepted: {', '.join(sorted(allowed))})"
                )
            model: ContentModel = factory(seed, **rest)
            return model
        if isinstance(klass, str) and klass in _NAMED:
            if rest:
                raise ValueError(
                    f"content class {klass!r} takes no parameters, "
                    f"got {', '.join(sorted(map(str, rest)))}"
                )
            return named_content(klass, seed)
        known = ", ".join([*_NAMED, "blend"])
        raise ValueError(f"unknown content class {klass!r} (expected one of: {known})")
    keys = ", ".join(map(str, spec)) or "none"
    raise ValueError(
        f"content table must have a 'mix' or a 'class' key, got keys: {keys} "
        "(or a 'corpus' key naming a page corpus file)"
    )


# --------------------------------------------------------------------------
# Measurement.


@dataclass(frozen=True, slots=True)
class ContentStats:
    """lz4 over real pages of a model.

    ``mean_ratio`` is total original bytes over total compressed bytes (how
    zram and zswap figures are quoted); a page lz4 cannot shrink counts as
    `PAGE_SIZE`, since zswap stores it as-is. Quartiles are of the per-page
    ratio. Shares are judged on the bytes, not on the class labels.
    """

    pages: int
    original_bytes: int
    compressed_bytes: int
    mean_ratio: float
    ratio_q1: float
    ratio_median: float
    ratio_q3: float
    zero_share: float
    same_filled_share: float
    incompressible_share: float


def lz4_size(page: bytes) -> int:
    """Compressed size of one page as zswap would store it (at most `PAGE_SIZE`)."""
    return min(len(lz4.block.compress(page, store_size=False)), PAGE_SIZE)


def measure(
    model: ContentModel, pages: int, *, first_page: int = 0, version: int = 0
) -> ContentStats:
    """Compress pages ``first_page .. first_page + pages - 1`` with lz4 and summarise.

    Same-filled counts non-zero same-filled pages only; zero pages count as
    zero. Incompressible means lz4's output was not smaller than the page.
    """
    if isinstance(pages, bool) or not isinstance(pages, int) or pages < 1:
        raise ValueError(f"measure needs a page count >= 1, got {pages!r}")
    sizes = np.empty(pages, dtype=np.int64)
    zero = same = incompressible = 0
    compress = lz4.block.compress
    for i in range(pages):
        data = model.page(first_page + i, version)
        if len(data) != PAGE_SIZE:
            raise ValueError(f"{model.name}: page {first_page + i} has {len(data)} bytes")
        n = len(compress(data, store_size=False))
        if n >= PAGE_SIZE:
            n = PAGE_SIZE
            incompressible += 1
        sizes[i] = n
        if data == _ZERO_PAGE:
            zero += 1
        elif data == data[:8] * _WORDS_PER_PAGE:
            same += 1
    ratios = PAGE_SIZE / sizes
    q1, q2, q3 = (float(q) for q in np.quantile(ratios, [0.25, 0.5, 0.75]))
    total = int(sizes.sum())
    return ContentStats(
        pages=pages,
        original_bytes=pages * PAGE_SIZE,
        compressed_bytes=total,
        mean_ratio=pages * PAGE_SIZE / total,
        ratio_q1=q1,
        ratio_median=q2,
        ratio_q3=q3,
        zero_share=zero / pages,
        same_filled_share=same / pages,
        incompressible_share=incompressible / pages,
    )
