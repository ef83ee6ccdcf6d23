"""A1111's `modules.sd_hijack`: `model_hijack`, the object extensions read the embeddings and the
prompt's token counts from.

A1111 patches the loaded model here (optimised attention, textual inversion, CLIP chunking). Easel
builds its models from diffusers/transformers classes and does all of that in its core, so nothing
is patched: `hijack`/`undo_hijack` leave the model alone, and `embedding_db` is a read-only view of
Easel's embeddings folder in A1111's shape (`word_embeddings`, `skipped_embeddings`,
`load_textual_inversion_embeddings`).
"""

from __future__ import annotations

from modules import shared


class EmbeddingDatabase:
    """A1111's `textual_inversion.EmbeddingDatabase` over the server's embeddings."""

    def __init__(self):
        self.ids_lookup: dict = {}
        self.expected_shape = -1
        self.embedding_dirs: dict = {}
        self.previously_displayed_embeddings = ()

    @staticmethod
    def _database():
        engine = shared.engine
        return getattr(engine, "embeddings", None) if engine is not None else None

    @property
    def word_embeddings(self) -> dict:
        database = self._database()
        return dict(database.loaded) if database is not None else {}

    @property
    def skipped_embeddings(self) -> dict:
        database = self._database()
        return dict(database.skipped) if database is not None else {}

    def load_textual_inversion_embeddings(self, force_reload: bool = False, sync_with_sd_model: bool = True):
        """Read the embeddings folder again (on the server's worker, for the loaded model)."""
        engine = shared.engine
        if engine is None or engine.embeddings is None:
            return
        if engine.queue is not None:
            engine.refresh_embeddings(force=force_reload)
        else:
            engine.embeddings.refresh(engine.models.model, force=force_reload)

    def register_embedding(self, embedding, model=None):
        raise NotImplementedError("Easel reads embeddings from the embeddings folder only; "
                                  "put the file there and call load_textual_inversion_embeddings()")

    def find_embedding_at_position(self, tokens, offset):
        return None, None

    def get_expected_shape(self):
        return self.expected_shape


class StableDiffusionModelHijack:
    """A1111's hijack state. Easel's attention and textual inversion live in its core; `layers`,
    `optimization_method` and `comments` are what A1111 reports."""

    fixes = None
    layers = None
    circular_enabled = False
    clip = None
    optimization_method = None

    def __init__(self):
        self.embedding_db = EmbeddingDatabase()
        self.comments: list[str] = []
        self.extra_generation_params: dict = {}

    def apply_optimizations(self, option=None):
        """Easel picks PyTorch's scaled-dot-product attention itself."""

    def convert_sdxl_to_ssd(self, m):
        raise NotImplementedError("Easel does not convert SDXL to SSD-1B")

    def hijack(self, m):
        """Nothing to patch: the core builds the model with its own attention and embeddings."""

    def undo_hijack(self, m):
        """See hijack."""

    def apply_circular(self, enable):
        """Tiling is a job field in Easel (p.tiling), applied per job by the core."""
        self.circular_enabled = bool(enable)

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}

    def get_prompt_lengths(self, text):
        """(tokens used, the limit of the chunks they fill) for one prompt (A1111's token counter;
        (0, 75) while no model is loaded)."""
        if shared.engine is None:
            return 0, 75
        from modules.ui import prompt_tools

        return prompt_tools.token_count(shared.engine, text, 1, [])

    def redo_hijack(self, m):
        """See hijack."""


model_hijack = StableDiffusionModelHijack()


class EmbeddingsWithFixes:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Easel inserts textual-inversion vectors in its core (modules.core.conditioning)")


def apply_optimizations(option=None):
    model_hijack.apply_optimizations(option)


def undo_optimizations():
    """Nothing was patched."""


def fix_checkpoint():
    """A1111's gradient-checkpointing fix; not needed for Easel's models."""
