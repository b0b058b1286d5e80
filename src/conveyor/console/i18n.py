"""English and Simplified Chinese: one flat JSON catalogue per language.

The language comes from the ``lang`` cookie (set by the switch on every
page), else from the browser's ``Accept-Language``, else English.  Every
string a template shows goes through :class:`Translator`; a unit test keeps
the two catalogues' keys identical and the templates free of bare text.

The words of a task kind (its name, its form, its pages) are its processor's
``labels``, not this folder's: the catalogue of a language is the console's
own, plus the labels of every installed kind (and of any other processor the
app serves, added by :func:`add_labels`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

LOCALES = Path(__file__).parent / "locales"
LANGS: dict[str, str] = {"en": "English", "zh-CN": "简体中文"}
DEFAULT_LANG = "en"
COOKIE = "lang"


_added: list[Mapping[str, Mapping[str, str]]] = []


def add_labels(labels: Mapping[str, Mapping[str, str]]) -> None:
    """Words of a kind the app serves although it is not installed (a processor a test
    or an embedding program registered by hand): ``{language: {key: text}}``."""
    if labels and labels not in _added:
        _added.append(labels)
        catalogue.cache_clear()


@cache
def catalogue(lang: str) -> dict[str, str]:
    from conveyor.processors import installed

    data = json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
    out = {str(k): str(v) for k, v in data.items()}
    for labels in [*(proc.labels for proc in installed().values()), *_added]:
        for key, text in (labels.get(lang) or {}).items():
            out.setdefault(str(key), str(text))
    return out


def _match(tag: str) -> str | None:
    tag = tag.strip().lower()
    if not tag or tag == "*":
        return None
    if tag.startswith("zh"):
        return "zh-CN"  # the only Chinese we have; closer than English for zh-TW readers too
    if tag.split("-")[0] == "en":
        return "en"
    return None


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The cookie wins; else the first language of the browser's list we speak."""
    if cookie in LANGS:
        return cookie
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = _match(tag)
        if lang is not None and q > 0:
            choices.append((-q, i, lang))
    return min(choices)[2] if choices else DEFAULT_LANG


class Translator:
    """``t(key, **args)``; ``t.n(key, n)`` picks ``key.one`` / ``key.other``."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGS else DEFAULT_LANG
        self._cat = catalogue(self.lang)
        self._fallback = catalogue(DEFAULT_LANG)

    def __call__(self, key: str, **args: Any) -> str:
        text = self._cat.get(key)
        if text is None:
            text = self._fallback.get(key, key)
        return text.format(**args) if args else text

    def has(self, key: str) -> bool:
        return key in self._cat

    def maybe(self, key: str, default: str) -> str:
        """A translation when the catalogue has one (status, phase, type names), else data."""
        return self._cat.get(key) or self._fallback.get(key) or default

    def n(self, key: str, n: int, **args: Any) -> str:
        form = "one" if n == 1 and f"{key}.one" in self._cat else "other"
        return self(f"{key}.{form}", n=self.number(n), **args)

    def number(self, n: float) -> str:
        return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"

    def duration(self, seconds: float | None) -> str:
        """Human-readable: 850 ms, 12.3 s, 4 min 05 s, 2 h 03 min, 3 d 4 h."""
        if seconds is None or math.isnan(seconds):
            return "–"
        s = max(0.0, float(seconds))
        if s < 1:
            return self("unit.ms", n=round(s * 1000))
        if s < 60:
            return self("unit.s", n=f"{s:.1f}" if s < 10 else f"{round(s)}")
        total = round(s)
        if total < 3600:
            return self("unit.min_s", m=total // 60, s=f"{total % 60:02d}")
        if total < 86400:
            return self("unit.h_min", h=total // 3600, m=f"{total % 3600 // 60:02d}")
        return self("unit.d_h", d=total // 86400, h=total % 86400 // 3600)

    def size(self, n: int | None) -> str:
        if n is None:
            return "–"
        value = float(n)
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if value < 1024 or unit == "TB":
                return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
        return f"{n} B"  # pragma: no cover
