"""A job's prompt networks: each distinct prompt's ``<lora:...>`` and ``<hypernet:...>`` tags, their
files found and read once per job (errors name the prompt field), and A1111's sd_hypernetwork tag."""

from __future__ import annotations

from . import hypernetwork, lora
from .types import RequestError


def with_hypernet(prompt: str, name: str, strength: float) -> str:
    """A1111's sd_hypernetwork: ``<hypernet:name:strength>`` after a prompt that does not name that
    hypernetwork already (a malformed tag is left for the prompt's own check to refuse)."""
    try:
        named = {n for n, _ in hypernetwork.mentioned(prompt)}
    except hypernetwork.HypernetworkError:
        return prompt
    return prompt if name in named else f"{prompt}<hypernet:{name}:{strength}>"


class Hypernets:
    """Each distinct prompt's <hypernet:...> tags, their files read once per job."""

    def __init__(self, find):
        self.find = find
        self._files: dict[str, hypernetwork.Hypernetwork] = {}

    def get(self, prompt: str, field_name: str) -> list[tuple[hypernetwork.Hypernetwork, float]]:
        try:
            wanted = hypernetwork.mentioned(prompt)
        except hypernetwork.HypernetworkError as exc:
            raise RequestError(field_name, str(exc)) from exc
        out = []
        for name, strength in wanted:
            if name not in self._files:
                if self.find is None:
                    raise RequestError(field_name, f"hypernetwork '{name}' cannot be used: no hypernetwork folder")
                try:
                    path = self.find(name)
                except LookupError as exc:
                    raise RequestError(field_name, str(exc.args[0] if exc.args else exc)) from exc
                if path is None:
                    raise RequestError(field_name, f"unknown hypernetwork '{name}'")
                try:
                    self._files[name] = hypernetwork.load(path)
                except hypernetwork.HypernetworkError as exc:
                    raise RequestError(field_name, f"hypernetwork '{name}': {exc}") from exc
            out.append((self._files[name], strength))
        return out


class PromptNetworks:
    """Each distinct prompt's <lora:...> tags, cut out and their files read once per job."""

    def __init__(self, find_lora):
        self.find_lora = find_lora
        self._done: dict[tuple[str, str], lora.JobLoras] = {}

    def get(self, prompt: str, field_name: str) -> "lora.JobLoras":
        key = (prompt, field_name)
        if key not in self._done:
            self._done[key] = lora.prepare(prompt, self.find_lora, field_name)
        return self._done[key]
