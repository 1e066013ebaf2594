"""What each caption prompt version said when it was first used: editing a prompt's text without
bumping its version is an error, never a silent overwrite.

The record is ``<workspace>/prompts/prompt_versions.json``: for every ``<id>@<version>`` a caption
pass has used, the task, the text and its SHA-256, written (atomically) the first time a batch
uses that version. Before a caption pass plans or runs, :func:`check_caption_prompt` compares
the registry's prompt with the record; an edited text under a recorded version raises
:class:`~exokiratory.core.prompts.registry.PromptRegistryError` with one line naming the file,
the key and the problem. Bumping ``version`` makes a new record (and new caption rows); the old
version's rows and record stay.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from exokiratory.core.prompts.registry import (
    REGISTRY_FILE,
    CaptionPrompt,
    PromptRegistryError,
    load_registry,
)
from exokiratory.core.storage import Storage

log = logging.getLogger(__name__)

VERSIONS_FILE = "prompts/prompt_versions.json"


def _records(storage: Storage) -> dict[str, dict[str, Any]]:
    if not storage.exists(VERSIONS_FILE):
        return {}
    try:
        data = json.loads(storage.read_bytes(VERSIONS_FILE).decode("utf-8"))
    except ValueError as exc:
        raise PromptRegistryError(f"{storage.url.rstrip('/')}/{VERSIONS_FILE}: {exc}") from exc
    prompts = data.get("caption_prompts", {}) if isinstance(data, dict) else {}
    return prompts if isinstance(prompts, dict) else {}


def check_caption_prompt(storage: Storage, prompt: CaptionPrompt) -> None:
    """Raise :class:`PromptRegistryError` (one line: file, key, problem) when the recorded text
    of ``prompt``'s id and version differs from its text now."""
    rec = _records(storage).get(f"{prompt.id}@{prompt.version}")
    if rec is None or rec.get("sha256") == prompt.digest:
        return
    where = f"{storage.url.rstrip('/')}/{REGISTRY_FILE}"
    raise PromptRegistryError(
        f"{where}: caption_prompts[{prompt.id}].text: edited without bumping its version "
        f"{prompt.version!r} (first used as {rec.get('text')!r}, recorded in {VERSIONS_FILE}); "
        "bump `version` to use the new text, or restore the old one"
    )


def record_caption_prompt(storage: Storage, prompt: CaptionPrompt) -> None:
    """Record ``prompt``'s text under its id and version (checked first; a no-op once
    recorded)."""
    check_caption_prompt(storage, prompt)
    records = _records(storage)
    key = f"{prompt.id}@{prompt.version}"
    if key in records:
        return
    records[key] = {"task": prompt.task, "text": prompt.text, "sha256": prompt.digest}
    text = json.dumps({"caption_prompts": records}, indent=1, sort_keys=True, ensure_ascii=False)
    storage.write_bytes_atomic(VERSIONS_FILE, text.encode("utf-8"))
    log.info("recorded caption prompt %s in %s", key, VERSIONS_FILE)


def caption_prompt(storage: Storage, prompt_id: str) -> CaptionPrompt:
    """The workspace registry's caption prompt ``prompt_id``, checked against the record.

    A workspace registry written before caption prompts existed (no ``caption_prompts`` key)
    takes them from the packaged default."""
    from exokiratory.core.prompts.registry import default_registry_text, parse_registry

    registry = load_registry(storage)
    where = f"{storage.url.rstrip('/')}/{REGISTRY_FILE}"
    if not registry.caption_prompts:
        log.debug("%s has no caption_prompts: using the packaged default's", where)
        registry = parse_registry(default_registry_text(), "packaged prompt_registry.yaml")
    prompt = registry.caption_prompt(prompt_id, where)
    check_caption_prompt(storage, prompt)
    return prompt
