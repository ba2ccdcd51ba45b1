"""The PHI guard of training (data.phi): every text of a record scanned, the findings a person reviewed set aside
(medtune's own list and data.phi_reviewed), and the rest refused, warned about or redacted. `medtune data audit`
reports through the same functions, so that its "`train` would act on N" is what train does."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from medtune import chat
from medtune.config import DataConfig
from medtune.errors import MedtuneError
from medtune.files import read_text
from medtune.phi.detect import FIELDS  # the text fields of a record

log = logging.getLogger("medtune.data")

REVIEWED = Path(__file__).parents[1] / "assets" / "phi_reviewed.json"


def text_fields(r: dict) -> dict[str, str]:
    """Every text of a record by field: instruction / input / output, or a chat record's turns ('turn N', from 1).
    Non-string values are left out (raw records too)."""
    if chat.is_chat(r):
        return chat.turn_texts(r)
    return {k: r[k] for k in FIELDS if isinstance(r.get(k), str)}


def scan_phi(records: list[dict]) -> list:
    """PHI findings (medtune.phi.Finding) in every text of every record, rows numbered from 1."""
    from medtune import phi

    return [
        phi.Finding(row, field, t, start, end)
        for row, r in enumerate(records, 1)
        for field, text in text_fields(r).items()
        for t, start, end in phi.scan_text(text)
    ]


def redact_phi(records: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Copies of the records with every finding replaced by [TYPE] (in every turn of a chat record), and the counts."""
    from collections import Counter

    from medtune import phi

    if not any(chat.is_chat(r) for r in records):
        return phi.redact_records(records)
    total: Counter = Counter()
    out = []
    for r in records:
        turns = []
        for t in r["messages"]:
            text, counts = phi.redact_text(t["content"])
            total.update(counts)
            turns.append({**t, "content": text})
        out.append({**r, "messages": turns})
    return out, {t: total[t] for t in phi.TYPES if total[t]}


def finding_key(records: list[dict], f) -> str:
    """A finding's identity without its text: sha256 of its type and the matched text."""
    text = text_fields(records[f.row - 1])[f.field][f.start : f.end]
    return hashlib.sha256(f"{f.type}\0{text}".encode()).hexdigest()


def reviewed_findings(path: str | None) -> set[str]:
    """Keys of findings a person reviewed and judged not to be patient information: medtune's own list (the
    wikidoc data's editor and author names, contact addresses and web references) plus data.phi_reviewed."""
    keys = set()
    for f in [REVIEWED] + ([Path(path).expanduser()] if path else []):
        try:
            data = json.loads(read_text(f))
            keys |= {k for k in data["reviewed"] if isinstance(k, str)}
        except (OSError, ValueError, KeyError, TypeError):
            raise MedtuneError(
                f"data.phi_reviewed: {f} is not a JSON file with a 'reviewed' list of finding keys"
            ) from None
    return keys


def unreviewed(records: list[dict], findings: list, cfg: DataConfig) -> list:
    """The findings that data.phi acts on: those no one reviewed (medtune's list and data.phi_reviewed)."""
    reviewed = reviewed_findings(cfg.phi_reviewed)
    return [f for f in findings if finding_key(records, f) not in reviewed]


def phi_guard(records: list[dict], cfg: DataConfig) -> tuple[list[dict], dict]:
    """data.phi: stop (error), warn, or replace findings with [TYPE] placeholders (redact) before training."""
    if cfg.phi == "off":
        return records, {}
    from medtune import phi

    findings = unreviewed(records, scan_phi(records), cfg)
    if not findings:
        return records, {}
    counts = phi.count_by_type(findings)
    shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    if cfg.phi == "error":
        raise MedtuneError(
            f"{cfg.source}: {len(findings)} possible protected health information findings ({shown}); "
            f"see them with `medtune data audit {cfg.source}`, or set data.phi=redact to replace "
            "them with [TYPE] placeholders (warn: train anyway)"
        )
    if cfg.phi == "warn":
        log.warning(
            f"data: warning: {len(findings)} possible protected health information findings ({shown}); "
            f"training on them as data.phi=warn says (`medtune data audit {cfg.source}` lists them)"
        )
        return records, {}
    records, counts = redact_phi(records)
    log.info(
        f"data: replaced {sum(counts.values())} possible protected health information findings with placeholders "
        f"({shown})"
    )
    return records, {"phi_redacted": counts}
