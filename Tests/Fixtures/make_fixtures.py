#!/usr/bin/env python3
"""Writes Stitch's reference fixtures: golden outputs of the Python reference
libraries (transformers, tokenizers, torch, Pillow) and small random-weight
models in Hugging Face format. Only these small outputs are committed; the
Swift tests compare against them.

    pip install -r Tests/Fixtures/requirements.txt
    python3 Tests/Fixtures/make_fixtures.py            # from the repository root

Real tokenizer files, photos and the YOLOX-Nano ONNX file are committed under Tests/Fixtures;
the real MiniLM and EfficientNet-Lite0 weights come from Scripts/fetch-test-models (run it first).
Everything is seeded, so a rerun rewrites identical files.
"""
import gzip
import io
import json
import os
import random
import struct
import sys
import tempfile
import zlib

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "Sources", "stitch", "Resources"))
import magic_reference  # noqa: E402  (the MAGiC reference is shared with `stitch bench`)
import yolox_reference  # noqa: E402  (as is the YOLOX one)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKENIZERS = os.path.join(HERE, "tokenizers")
IMAGES = os.path.join(HERE, "photos")
YOLOX = os.path.join(HERE, "yolox-nano-coco")
TEST_MODELS = os.environ.get("STITCH_TEST_MODELS") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stitch", "test-models")
MINILM = os.path.join(TEST_MODELS, "all-MiniLM-L6-v2")
EFFICIENTNET = os.path.join(TEST_MODELS, "efficientnet-lite0")


def out(*parts):
    path = os.path.join(HERE, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def write_json(value, *parts):
    with open(out(*parts), "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=0, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------- tokenizers

HAND_WRITTEN = [
    "", " ", "  ", "\t", "\n", " \n ", "a", "A", "Hello world", "Hello, world!",
    "hello   world", "hello\tworld", "hello\n\nworld", "  leading spaces", "trailing spaces   ",
    "line one\nline two\r\nline three", "tabs\t\tand\t spaces", "\u00a0non-breaking\u00a0space",
    "em\u2003space and\u2009thin space", "zero\u200bwidth space", "ideographic\u3000space",
    "I'm", "you're", "we've", "they'll", "she'd", "it's", "don't", "DON'T", "I'M", "it's'",
    "'s", "'S", "rock 'n' roll", "the dog's bone", "o'clock", "''quoted''", "'tis",
    "ain't nothin' but", "y'all'd've", "l'homme", "c'est la vie",
    "3.14159", "1,000,000", "2023-11-22", "12:30pm", "$100.00", "50%", "+44 20 7946 0958",
    "0x1F", "1e-5", "v2.0.1", "#42", "№5", "٣٤٥", "१२३", "Ⅻ", "½ cup", "²³",
    "!!!", "?!?", "...", "—", "–", "«quoted»", "“smart quotes”", "‘single’", "(parens)", "[brackets]",
    "{braces}", "<html>", "a/b\\c", "snake_case_name", "kebab-case-name", "CamelCaseName",
    "email@example.com", "https://example.com/path?q=1&r=2#frag", "@user #hashtag", "C++ & C#",
    "café", "cafe\u0301", "naïve résumé", "Ærøskøbing", "straße", "İstanbul", "ΣΊΣΥΦΟΣ", "ὀδυσσεύς",
    "Привет, мир!", "Здравствуйте", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "こんにちは世界", "你好，世界！", "한국어 텍스트", "中文字符测试", "日本語のテキスト", "Tiếng Việt có dấu",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "I ❤️ NY", "emoji😀inside", "☃ snowman", "♠♥♦♣", "→ ← ↑ ↓", "∑∫√∞",
    "€£¥₹", "©®™", "°C", "µs", "Ω", "ﬁ ligature", "ＦＵＬＬＷＩＤＴＨ", "ｈａｌｆ", "x\u0000y", "a\u0007b",
    "\ufeffBOM", "\ufffd replacement", "control\u001fchar", "soft\u00adhyphen", "rtl\u200fmark",
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 120, "ab" * 70, "xyz" * 40, "Antidisestablishmentarianism is long",
    "A photo of a cat.", "a photo of a dog", "A picture of a zebra standing in a field.",
    "a man riding a bicycle down the street next to a truck",
    "Please answer the question according to the above context.",
    "Context: a dog sitting on a bench.\nQuestion: what color is the dog?\nAnswer: brown",
    "===", "I am an intelligent image captioning bot.", "There are 3 people.",
    "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK bRoWn",
    "<|endoftext|>", "<|startoftext|>", "[CLS] [SEP] [MASK]", "[UNK]", "##suffix", "</w>",
    "mixed123numbers456", "abc123def", "123abc", "a1b2c3", "99 bottles of beer", "007",
    "multiple     spaces     between", " \t\n mixed whitespace \t\n ", "end with newline\n", "\n\nstarts with newlines",
]

FRAGMENTS = [
    "the", "a", "dog", "cat", "bicycle", "truck", "zebra", "riding", "standing", "on", "in", "of",
    "Photo", "PICTURE", "red", "blue", "42", "3.5", "2024", "don't", "it's", "we'll", "!", "?", ",",
    ".", "...", "-", "(", ")", "\"", "'", "café", "naïve", "über", "東京", "北京", "ソウル", "😀", "🚲",
    "🦓", "—", "é", "ß", "Ж", "λ", "ا", "ह", "\t", "\n", "  ", " ", "x2", "e-mail", "co-op", "U.S.A.",
]


def tokenizer_corpus():
    rng = random.Random(20261122)
    corpus = list(HAND_WRITTEN)
    while len(corpus) < 340:
        n = rng.randint(1, 12)
        parts = [rng.choice(FRAGMENTS) for _ in range(n)]
        joiners = [rng.choice([" ", " ", " ", "", "  ", "\t", "\n"]) for _ in range(n)]
        corpus.append("".join(p + j for p, j in zip(parts, joiners)))
    # A few random code points from several scripts and planes.
    for _ in range(20):
        corpus.append("".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x24F),
                                               rng.randint(0x370, 0x4FF), rng.randint(0x4E00, 0x9FFF),
                                               rng.randint(0x1F300, 0x1F6FF)]))
                              for _ in range(rng.randint(1, 15))))
    return corpus


def clip_vocab_files(tmp):
    return magic_reference.clip_vocab_files(os.path.join(TOKENIZERS, "bpe_simple_vocab_16e6.txt.gz"), tmp)


def transformers47():
    """transformers 4.7.0, the version MAGiC's published code pins: its slow CLIPTokenizer class (made to run without
    ftfy, as the published runs did) and its decode clean-up. The wheel is fetched from PyPI into the test-model cache
    and imported in place of today's transformers just long enough to load those modules (its dependency check
    skipped: only its pure-Python tokenizers run), then today's transformers is put back."""
    import subprocess
    import types
    site = os.path.join(TEST_MODELS, "transformers-4.7.0")
    if not os.path.isdir(os.path.join(site, "transformers")):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "transformers==4.7.0"], check=True)
            import zipfile
            zipfile.ZipFile(os.path.join(tmp, "transformers-4.7.0-py3-none-any.whl")).extractall(site)
    ours = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "transformers"}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, site)
    sys.modules["transformers.dependency_versions_check"] = types.ModuleType("transformers.dependency_versions_check")
    try:
        import transformers
        assert transformers.__version__ == "4.7.0", transformers.__version__
        from transformers.models.bert.tokenization_bert import BasicTokenizer
        from transformers.models.clip.tokenization_clip import CLIPTokenizer
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        import transformers.tokenization_utils  # noqa: F401  (loaded now, used by the class later)
    finally:
        sys.path.remove(site)
        for name in [name for name in sys.modules if name.split(".")[0] == "transformers"]:
            del sys.modules[name]
        sys.modules.update(ours)

    def clip_tokenizer(folder):
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        tokenizer.fix_text, tokenizer.nlp = None, BasicTokenizer(do_lower_case=True)   # as without ftfy installed
        return tokenizer
    return clip_tokenizer, PreTrainedTokenizerBase.clean_up_tokenization


def clip47_corpus():
    """Strings of the character classes MAGiC's candidate texts hold: accents, contractions, punctuation, U+FFFD,
    controls and format characters, CJK, emoji, other scripts, digits, whitespace of every kind, special tokens."""
    rng = random.Random(4_7_0)
    pieces = ["café", "naïve", "résumé", "Ærøskøbing", "straße", "İstanbul", "ΣΊΣΥΦΟΣ", "ὈΔΥΣΣΕΎΣ", "Σ", "aΣ", "ΑΣ.",
              "don't", "I'm", "dog's", "they'll", "we've", "you're", "'s", "n't", " '", "' ", "''", "\"quoted\"",
              "...", "!!", "?!", ",", ".", " .", " ,", " ?", " !", "-", "--", "—", "(", ")", "[a]", "{b}", "<|endoftext|>",
              "<|startoftext|>", "<|ENDOFTEXT|>", "<-start_of_text->", "<-pad->", "\ufffd", "\ufffd\ufffd", "\x00", "\x07",
              "\x1f", "\u200b", "\u200d", "\u00ad", "\ufeff", "\u2028", "\u0085", "\x0b", "\u00a0", "\u3000", "\u2009",
              "東京", "北京", "中文字符", "こんにちは", "한국어", "ソウル", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "☃", "∑∞",
              "€100", "½", "²", "Ⅻ", "٣", "१२", "3.14", "1,000", "x2", "Привет", "мир", "مرحبا", "שלום", "नमस्ते", "ไทย",
              "ﬁ", "ＦＵＬＬ", "ǅ", "ß", "ŉ", "e\u0301", "o\u0308", "\u0345", "ſ", "'ſ", "Ω", "K", "Å", "a", "photo", "A",
              "DOG", "riding", "the", "of", "on", "a man", "two dogs", "\t", "\n", "\r\n", "  ", " ", ""]
    corpus = []
    while len(corpus) < 2400:
        n = rng.randint(1, 10)
        corpus.append("".join(rng.choice(pieces) + rng.choice(["", " ", " ", "", "  ", "\n"]) for _ in range(n)))
    for _ in range(200):   # random code points of several blocks
        corpus.append("".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x24F), rng.randint(0x300, 0x36F),
                                               rng.randint(0x370, 0x4FF), rng.randint(0x2000, 0x206F), rng.randint(0x3040, 0x30FF),
                                               rng.randint(0x4E00, 0x9FFF), rng.randint(0xAC00, 0xD7A3), rng.randint(0x1F300, 0x1F6FF)]))
                              for _ in range(rng.randint(1, 12))))
    return corpus


def make_clip47_goldens():
    """transformers 4.7.0's slow CLIPTokenizer without ftfy, and its decode clean-up, on 2,600 strings."""
    clip47, clean_up = transformers47()
    corpus = clip47_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        clip_vocab_files(tmp)
        tokenizer = clip47(tmp)
        ids = [tokenizer(text, truncation=True, max_length=77)["input_ids"] for text in corpus]
    write_json({"corpus": corpus, "clip": ids, "clean_up": [clean_up(text) for text in corpus]}, "tokenizers", "clip47_golden.json")
    print(f"tokenizers: transformers 4.7.0 slow CLIP tokenizer on {len(corpus)} strings")


def make_tokenizer_goldens():
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizerFast, GPT2TokenizerFast

    corpus = tokenizer_corpus()
    gpt2 = GPT2TokenizerFast(os.path.join(TOKENIZERS, "gpt2-vocab.json"), os.path.join(TOKENIZERS, "gpt2-merges.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = CLIPTokenizerFast(*clip_vocab_files(tmp))
    bert = Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    bert.no_padding()
    bert.no_truncation()
    golden = {
        "corpus": corpus,
        "gpt2": [gpt2(text)["input_ids"] for text in corpus],
        # CLIPProcessor's tokenizer: start/end tokens, truncated to CLIP's 77-token context.
        "clip": [clip(text, truncation=True, max_length=77)["input_ids"] for text in corpus],
        "bert": [bert.encode(text).ids for text in corpus],
    }
    golden["gpt2_decoded"] = [gpt2.decode(ids) for ids in golden["gpt2"]]
    golden["clip_decoded"] = [clip.decode(ids, skip_special_tokens=True) for ids in golden["clip"]]
    write_json(golden, "tokenizers", "golden.json")
    print(f"tokenizers: {len(corpus)} strings")


# ---------------------------------------------------------------- tokenizer.json

CODE_SNIPPETS = [
    "def f(x):\n    return x**2  # square", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}", "if x != None and y >= 3:",
    "console.log(`${a}+${b}`);", "SELECT * FROM t WHERE id=42;", "    indented\n        more\n", "x=1;y=2;z=x+y", "   ", "\r\n",
    "a\r\nb", "12345678901234567890", "3.14159265358979", "1,234,567.89", "v1.2.3-beta+exp.sha.5114f85", "<div class=\"a\">b</div>",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "λx. x + 1", "a == b && c || !d", "0b1010 0o17 0xFF",
]
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def tokenizer_json_corpus():
    """The tokenizer corpus, code, and random joins of fragments, code, digit runs, whitespace runs and special
    tokens' texts: 1,200 strings."""
    rng = random.Random(20261202)
    corpus = tokenizer_corpus() + CODE_SNIPPETS
    pieces = FRAGMENTS + CODE_SNIPPETS + ["   ", "\t\t", "\n\n", "\r\n", "1234", "56789", "0", "<|im_start|>", "<|endoftext|>",
                                          "<|begin_of_text|>", "<s>", "</s>", "\u2581", "Hello", "world", "I'M", "'LL", "你好", "👍🏽"]
    while len(corpus) < 1200:
        corpus.append("".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n", "\t", "   ", " \n "]) for _ in range(rng.randint(1, 10))))
    return corpus


def tokenizer_json_files():
    """tokenizer.json files with the components of each family (the real files cannot be had here): GPT-2 as
    transformers converts it; Llama 3, Qwen2 and SmolLM pre-tokenizers over GPT-2's real vocabulary and merges;
    Llama 2 (legacy) and Mistral-style (Metaspace, non-legacy) converted from the SentencePiece fixture model."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import GPT2TokenizerFast, LlamaTokenizerFast
    vocab, merges = os.path.join(TOKENIZERS, "gpt2-vocab.json"), os.path.join(TOKENIZERS, "gpt2-merges.txt")
    files = {"gpt2": GPT2TokenizerFast(vocab, merges).backend_tokenizer}

    def byte_level(pre, normalizer=None, ignore_merges=False, specials=(), template=None):
        tokenizer = Tokenizer(BPE.from_file(vocab, merges, ignore_merges=ignore_merges))
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens(list(specials))
        tokenizer.post_processor = (processors.TemplateProcessing(single=f"{template} $A", special_tokens=[(template, tokenizer.token_to_id(template))])
                                    if template else processors.ByteLevel(trim_offsets=False))
        return tokenizer

    files["llama3"] = byte_level(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                                          pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
                                 ignore_merges=True, specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], template="<|begin_of_text|>")
    files["qwen2"] = byte_level(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                                normalizer=normalizers.NFC(), specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    files["smollm"] = byte_level(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
                                 specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    model = out("sentencepiece", "llama.model")
    files["llama2"] = LlamaTokenizerFast(vocab_file=model, legacy=True, from_slow=True, add_prefix_space=True).backend_tokenizer
    files["mistral"] = LlamaTokenizerFast(vocab_file=model, legacy=False, from_slow=True, add_prefix_space=True).backend_tokenizer
    return files


BYTE_LEVEL_FILES = ["gpt2", "llama3", "qwen2", "smollm"]


def tokenizer_config_cases(texts):
    """A folder's tokenizer.json with a tokenizer_config.json through transformers' AutoTokenizer: its Llama classes
    rebuild BOS/EOS from add_bos_token / add_eos_token; PreTrainedTokenizerFast (Llama 3's class) keeps the template."""
    from transformers import AutoTokenizer
    files = tokenizer_json_files()
    cases = []
    for name, config in [("llama2", {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": False, "add_eos_token": True}),
                         ("mistral", {"tokenizer_class": "LlamaTokenizerFast", "add_eos_token": True, "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}}),
                         ("llama2", {"tokenizer_class": "LlamaTokenizer"}),
                         ("llama3", {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": True})]:
        with tempfile.TemporaryDirectory() as folder:
            files[name].save(os.path.join(folder, "tokenizer.json"))
            with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
                json.dump(config, f)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            cases.append({"file": name, "config": config, "ids": [tokenizer.encode(text) for text in texts]})
    return cases


def make_tokenizer_json_goldens():
    corpus = tokenizer_json_corpus()
    golden = {"corpus": corpus}
    for name, tokenizer in tokenizer_json_files().items():
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.save(out("tokenizer-json", f"{name}.json"))
        if name in BYTE_LEVEL_FILES:
            # GPT-2's vocabulary and merges are committed once (tokenizers/); the tests put them back into these files.
            with open(out("tokenizer-json", f"{name}.json"), encoding="utf-8") as f:
                saved = json.load(f)
            saved["model"]["vocab"], saved["model"]["merges"] = {}, []
            with open(out("tokenizer-json", f"{name}.json"), "w", encoding="utf-8") as f:
                json.dump(saved, f, ensure_ascii=False, indent=1)
        ids = [tokenizer.encode(text).ids for text in corpus]
        golden[name] = {"ids": ids, "decoded": [tokenizer.decode(i, skip_special_tokens=False) for i in ids]}
    golden["tokenizer_config"] = tokenizer_config_cases(corpus[:40])
    write_json(golden, "tokenizer-json", "golden.json")
    print(f"tokenizer.json: {len(corpus)} strings through " + ", ".join(golden.keys() - {"corpus"}))


# ---------------------------------------------------------------- tensor ops

def make_tensor_goldens():
    g = torch.Generator().manual_seed(7)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).float()
    t = {}
    t["matmul.a"], t["matmul.b"] = r(3, 5, 7), r(7, 4)
    t["matmul.out"] = t["matmul.a"] @ t["matmul.b"]
    t["bmm.a"], t["bmm.b"] = r(2, 3, 4), r(2, 4, 5)
    t["bmm.out"] = torch.bmm(t["bmm.a"], t["bmm.b"])
    t["linear.x"], t["linear.w"], t["linear.b"] = r(4, 6), r(5, 6), r(5)
    t["linear.out"] = torch.nn.functional.linear(t["linear.x"], t["linear.w"], t["linear.b"])
    t["conv1d.w"] = r(6, 5)   # GPT-2 Conv1D layout [in, out]
    t["conv1d.out"] = t["linear.x"] @ t["conv1d.w"] + t["linear.b"]
    t["layernorm.x"], t["layernorm.w"], t["layernorm.b"] = r(4, 10) * 3 + 1, r(10), r(10)
    t["layernorm.out"] = torch.nn.functional.layer_norm(t["layernorm.x"], (10,), t["layernorm.w"], t["layernorm.b"], 1e-5)
    t["softmax.x"] = r(3, 9) * 4
    t["softmax.out"] = torch.softmax(t["softmax.x"], -1)
    t["logsoftmax.out"] = torch.log_softmax(t["softmax.x"], -1)
    t["act.x"] = torch.linspace(-6, 6, 101)
    t["gelu.out"] = torch.nn.functional.gelu(t["act.x"])
    t["gelu_tanh.out"] = torch.nn.functional.gelu(t["act.x"], approximate="tanh")
    t["quick_gelu.out"] = t["act.x"] * torch.sigmoid(1.702 * t["act.x"])

    # Multi-head attention, batch 2, 7 tokens, 3 heads of 4: causal; and padded (second row's last 2 keys masked).
    b, n, heads, d = 2, 7, 3, 4
    q, k, v = r(b, n, heads * d), r(b, n, heads * d), r(b, n, heads * d)
    t["attn.q"], t["attn.k"], t["attn.v"] = q, k, v
    split = lambda x: x.view(b, n, heads, d).transpose(1, 2)            # [b, heads, n, d]
    merge = lambda x: x.transpose(1, 2).reshape(b, n, heads * d)        # [b, n, heads * d]
    causal = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
    t["attn.causal"] = merge(causal)
    mask = torch.ones(b, n)
    mask[1, -2:] = 0
    t["attn.mask"] = mask
    padded = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask[:, None, None, :].bool())
    t["attn.padded"] = merge(padded)
    # Convolutions of one image [4, 10, 12]: 3x3 stride 2 with TensorFlow SAME padding (0 top/left, 1 bottom/right
    # for even sizes), 1x1 pointwise, and 5x5 depthwise stride 2 with SAME padding (1 before, 2 after).
    F = torch.nn.functional
    t["conv.x"], t["conv.w"], t["conv.b"] = r(4, 10, 12), r(6, 4, 3, 3), r(6)
    t["conv.out"] = F.conv2d(F.pad(t["conv.x"][None], (1, 1, 1, 1)), t["conv.w"], t["conv.b"], stride=2)[0]
    t["conv.same_out"] = F.conv2d(F.pad(t["conv.x"][None], (0, 1, 0, 1)), t["conv.w"], t["conv.b"], stride=2)[0]
    t["pointwise.w"] = r(5, 4, 1, 1)
    t["pointwise.out"] = F.conv2d(t["conv.x"][None], t["pointwise.w"])[0]
    t["depthwise.w"], t["depthwise.b"] = r(4, 1, 5, 5), r(4)
    t["depthwise.out"] = F.conv2d(F.pad(t["conv.x"][None], (1, 2, 1, 2)), t["depthwise.w"], t["depthwise.b"], stride=2, groups=4)[0]
    save_file({name: x.contiguous().numpy() for name, x in t.items()}, out("tensor", "ops.safetensors"))
    print(f"tensor ops: {len(t)} tensors")


def make_dtype_goldens():
    """The same values stored as F32, F16 and BF16 by the safetensors library, and torch's float32 upcasts."""
    from safetensors.torch import save_file as save_torch
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(61, generator=g) * 100, torch.tensor([0.0, -0.0, 1e-8, 65504.0, -3.0e38, 1.5e-5])])
    save_torch({"x.f32": x, "x.f16": x.half(), "x.bf16": x.bfloat16(), "x.f16_2d": x[:60].half().view(6, 10)},
               out("tensor", "dtypes.safetensors"))
    save_file({"x.f32": x.numpy(), "x.f16": x.half().float().numpy(), "x.bf16": x.bfloat16().float().numpy(),
               "x.f16_2d": x[:60].half().float().view(6, 10).numpy()}, out("tensor", "dtypes_expected.safetensors"))


# ---------------------------------------------------------------- images

def make_test_images():
    """Small synthetic images committed beside the goldens: upscaling, alpha, grey and CMYK paths."""
    w, h = 37, 23
    yy, xx = np.mgrid[0:h, 0:w]
    rgba = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx * yy) % 256, 128 + (xx % 2) * 127], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(out("images", "gradient.png"))
    grey = ((xx * 7 + yy * 11) % 256).astype(np.uint8)
    Image.fromarray(grey, "L").save(out("images", "grey.jpg"), quality=90)
    Image.fromarray(rgba[..., :3], "RGB").convert("CMYK").save(out("images", "cmyk.jpg"), quality=95)
    Image.fromarray(rgba[..., :3], "RGB").save(out("images", "rgb.jpg"), quality=92)
    Image.fromarray(rgba[..., :3], "RGB").save(out("images", "rgb.png"))
    make_png_variants(xx, yy)
    # EXIF orientation 6 ("rotate 90"): Pillow's open() and transformers ignore it, and so must Stitch.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgba[..., :3], "RGB").save(out("images", "exif_rotated.jpg"), quality=92, exif=exif.tobytes())


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_filtered(rows, pixel_bytes, filters):
    """PNG image data rows [h, stride] as the encoder filters them, row y with filters[y % len(filters)]
    (0 none, 1 sub, 2 up, 3 average, 4 Paeth), each row prefixed with its filter type."""
    out, above = [], np.zeros(rows.shape[1], np.int32)
    for y, row in enumerate(rows.astype(np.int32)):
        kind = filters[y % len(filters)]
        left = np.concatenate([np.zeros(pixel_bytes, np.int32), row[:-pixel_bytes]])
        upper_left = np.concatenate([np.zeros(pixel_bytes, np.int32), above[:-pixel_bytes]])
        p = left + above - upper_left
        pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, above, upper_left))
        prediction = [0, left, above, (left + above) // 2, paeth][kind]
        out.append(bytes([kind]) + ((row - prediction) % 256).astype(np.uint8).tobytes())
        above = row
    return b"".join(out)


def write_png(path, samples, bit_depth, colour_type, extra_chunks=(), filters=(0,), idat_chunks=1):
    """A PNG of `samples` [h, w, channels] (big-endian 16-bit where bit_depth is 16) with chunks, filters and IDAT
    splits Pillow cannot write."""
    h, w = samples.shape[:2]
    rows = samples.astype(">u2" if bit_depth == 16 else np.uint8).reshape(h, -1)
    pixel_bytes = rows.view(np.uint8).shape[1] // w
    data = zlib.compress(png_filtered(rows.view(np.uint8), pixel_bytes, filters))
    cuts = [len(data) * i // idat_chunks for i in range(idat_chunks + 1)]
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0))
    body = b"".join(png_chunk(kind, data) for kind, data in extra_chunks)
    body += b"".join(png_chunk(b"IDAT", data[a:b]) for a, b in zip(cuts, cuts[1:])) + png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + header + body)


# The 8-bit PNGs Stitch decodes without libpng (colour type: channels), each with every row filter and split IDATs.
FILTERED_PNGS = {"filtered-grey.png": (0, 1), "filtered-grey-alpha.png": (4, 2), "filtered-rgb.png": (2, 3), "filtered-rgba.png": (6, 4)}


def make_png_variants(xx, yy):
    """PNGs whose colour chunks and 16-bit samples Pillow's convert("RGB") (and OpenCV) take as stored: a gamma of 1.0
    with a cHRM chunk, 16-bit RGB under an sRGB chunk, 16-bit RGBA; 8-bit ones using all five row filters on noise
    and gradients (so every Paeth choice occurs), their image data in three IDAT chunks; a palette PNG."""
    rgb = np.stack([xx * 255 // 36, yy * 255 // 22, (xx * yy * 5) % 256], -1)
    chrm = struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)
    write_png(out("images", "gamma1.png"), rgb, 8, 2, [(b"gAMA", struct.pack(">I", 100000)), (b"cHRM", chrm)])
    wide = rgb * 257 + (xx * 37 + yy * 91)[..., None] % 257
    write_png(out("images", "rgb16.png"), wide, 16, 2, [(b"sRGB", b"\x00")])
    alpha = (xx * 2000 + yy * 900)[..., None] % 65536
    write_png(out("images", "rgba16.png"), np.concatenate([wide, alpha], -1), 16, 6)
    rng = np.random.default_rng(19)
    for name, (colour_type, channels) in FILTERED_PNGS.items():
        smooth = np.stack([(xx * (9 + 4 * c) + yy * (5 + 3 * c)) % 256 for c in range(channels)], -1)
        noisy = rng.integers(0, 256, smooth.shape)
        samples = np.where(((xx // 4 + yy // 3) % 2 == 0)[..., None], smooth, noisy)
        write_png(out("images", name), samples, 8, colour_type, [(b"gAMA", struct.pack(">I", 45455))], filters=(0, 1, 2, 3, 4, 4, 3, 1, 2), idat_chunks=3)
    Image.fromarray(rgb.astype(np.uint8), "RGB").quantize(17).save(out("images", "palette.png"))


def imagenet_reference(image):
    """torchvision's Resize(256, BICUBIC) + CenterCrop(224) + ToTensor + Normalize, in PIL and numpy."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 256, int(256 * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = image.resize(size, Image.BICUBIC)
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1).copy()


def make_image_goldens():
    from transformers import CLIPImageProcessor
    processor = CLIPImageProcessor()   # openai/clip-vit-base-patch32 defaults
    decoded, clip, imagenet = {}, {}, {}
    for name in ["gradient.png", "grey.jpg", "cmyk.jpg", "rgb.jpg", "rgb.png", "exif_rotated.jpg", "gamma1.png", "rgb16.png", "rgba16.png",
                 "palette.png", *FILTERED_PNGS]:
        image = Image.open(out("images", name)).convert("RGB")
        decoded[name] = np.asarray(image, dtype=np.float32)
        if name in ("gradient.png", "cmyk.jpg"):   # upscaling from a tiny image; a non-RGB source
            clip[name] = processor(images=image, return_tensors="np")["pixel_values"][0]
    for name in sorted(n for n in os.listdir(IMAGES) if not n.endswith(".md")):
        image = Image.open(os.path.join(IMAGES, name)).convert("RGB")
        clip[name] = processor(images=image, return_tensors="np")["pixel_values"][0]
        imagenet[name] = imagenet_reference(image)
        print(f"image {name}: {image.size}")
    save_file(decoded, out("images", "decoded.safetensors"))
    save_file(clip, out("images", "clip_pixels.safetensors"))
    save_file(imagenet, out("images", "imagenet_pixels.safetensors"))


# ---------------------------------------------------------------- tiny models

def save_tiny(model, folder):
    """Random weights rounded to float16 and saved as F16 safetensors, so that goldens
    computed in float32 from the rounded weights are exactly what Stitch loads."""
    model = model.half()
    model.save_pretrained(out(folder), safe_serialization=True)
    from safetensors import safe_open
    with safe_open(out(folder, "model.safetensors"), "pt") as f:
        sums = {name: float(f.get_tensor(name).double().sum()) for name in f.keys()}
    write_json(sums, folder, "tensor_sums.json")


def make_tiny_models():
    from transformers import CLIPConfig, CLIPModel, GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      activation_function="gelu_new"))
    save_tiny(gpt2, "tiny-gpt2")
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=32, projection_dim=16),
        projection_dim=16))
    save_tiny(clip, "tiny-clip")
    print("tiny models: tiny-gpt2, tiny-clip")


# ---------------------------------------------------------------- model goldens

CLIP_TEXTS = ["a photo of a zebra", "a dog next to a bicycle and a truck", "a red truck",
              "an empty street at night, in the rain", "two cats"]
GPT2_PROMPTS = ["A photo of a", "The quick brown fox jumps over the lazy dog", "Hello"]


def clip_tokenizer():
    from transformers import CLIPTokenizerFast
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizerFast(*clip_vocab_files(tmp))


def make_tiny_clip_variant():
    """Patch 14 at 56 pixels, erf GELU and a modern eos_token_id: the other config paths."""
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(2)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu", eos_token_id=49407),
        vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=56, patch_size=14, hidden_act="gelu"),
        projection_dim=8))
    save_tiny(model, "tiny-clip-p14")


def make_clip_goldens(folder):
    from transformers import CLIPImageProcessor, CLIPModel
    model = CLIPModel.from_pretrained(out(folder), torch_dtype=torch.float32).eval()
    size = model.config.vision_config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    images = [Image.open(os.path.join(IMAGES, n)).convert("RGB") for n in ["chelsea.png", "coffee.png"]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    text = clip_tokenizer()(CLIP_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        golden = {
            "pixels": pixels,
            "image_features": model.get_image_features(pixel_values=pixels),
            "text_features": model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"]),
            "logits_per_image": outputs.logits_per_image,
            "vision_hidden": outputs.vision_model_output.last_hidden_state,
        }
    save_file({k: v.contiguous().numpy() for k, v in golden.items()}, out(folder, "golden.safetensors"))
    write_json({"texts": CLIP_TEXTS, "input_ids": [[i for i, m in zip(ids, mask) if m] for ids, mask in
                                                    zip(text["input_ids"].tolist(), text["attention_mask"].tolist())]},
               folder, "golden_text.json")


def make_gpt2_goldens():
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    tokenizer = GPT2TokenizerFast(os.path.join(TOKENIZERS, "gpt2-vocab.json"), os.path.join(TOKENIZERS, "gpt2-merges.txt"))
    model = GPT2LMHeadModel.from_pretrained(out("tiny-gpt2"), torch_dtype=torch.float32).eval()
    columns = torch.randperm(50257, generator=torch.Generator().manual_seed(5))[:256].sort().values
    tensors, meta = {"columns": columns.float()}, {"prompts": [], "greedy": [], "continuation": [], "continuation_logprobs": []}
    for i, prompt in enumerate(GPT2_PROMPTS):
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            out_ = model(torch.tensor([ids]), output_hidden_states=True)
            tensors[f"p{i}.hidden"] = out_.hidden_states[-1][0]
            tensors[f"p{i}.logits_columns"] = out_.logits[0][:, columns]
            tensors[f"p{i}.last_logits"] = out_.logits[0, -1]
            greedy = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=12, pad_token_id=50256)[0, len(ids):].tolist()
            continuation = tokenizer(" zebra crossing")["input_ids"]
            full = torch.tensor([ids + continuation])
            logprobs = torch.log_softmax(model(full).logits[0], -1)
            picked = [float(logprobs[len(ids) - 1 + j, t]) for j, t in enumerate(continuation)]
        meta["prompts"].append(ids)
        meta["greedy"].append(greedy)
        meta["continuation"].append(continuation)
        meta["continuation_logprobs"].append(picked)
    save_file({k: v.contiguous().numpy() for k, v in tensors.items()}, out("tiny-gpt2", "golden.safetensors"))
    write_json(meta, "tiny-gpt2", "golden.json")



# ---------------------------------------------------------------- decoding goldens

MAGIC_IMAGES = [os.path.join(IMAGES, "chelsea.png"), os.path.join(IMAGES, "coffee.png"), os.path.join(IMAGES, "rocket.jpg"),
                os.path.join(IMAGES, "astronaut.png"), out("images", "rgb.jpg"), out("images", "grey.jpg"), out("images", "gradient.png")]
MAGIC_SETTINGS = [dict(k=45, alpha=0.1, beta=2.0, max_tokens=16), dict(k=10, alpha=0.6, beta=1.0, max_tokens=12),
                  dict(k=30, alpha=0.0, beta=5.0, max_tokens=10)]
STORY_TITLE = "A day at the zoo."


def make_decoding_goldens():
    """transformers' generate (contrastive search, beam search) on tiny-gpt2, and the MAGiC
    reference on tiny-gpt2 + tiny-clip for every image and setting."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizerFast, GPT2LMHeadModel, GPT2TokenizerFast
    tokenizer = GPT2TokenizerFast(os.path.join(TOKENIZERS, "gpt2-vocab.json"), os.path.join(TOKENIZERS, "gpt2-merges.txt"))
    lm = GPT2LMHeadModel.from_pretrained(out("tiny-gpt2"), torch_dtype=torch.float32).eval()
    prompts = [[50256]] + [tokenizer(p)["input_ids"] for p in GPT2_PROMPTS]
    golden = {"prompts": prompts, "contrastive": [], "beam": []}

    def generate(prompt, **settings):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            return lm.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=50256, **settings)[0, len(prompt):].tolist()

    for settings in [dict(penalty_alpha=0.6, top_k=4, max_new_tokens=16), dict(penalty_alpha=0.3, top_k=8, max_new_tokens=24)]:
        golden["contrastive"].append({"alpha": settings["penalty_alpha"], "k": settings["top_k"], "max_tokens": settings["max_new_tokens"],
                                      "outputs": [generate(p, **settings) for p in prompts]})
    # End tokens the tiny model actually produces under beam search, so that beams finish early
    # and the hypothesis bookkeeping (length penalty, early stopping) decides the result.
    plain = generate(prompts[0], num_beams=3, do_sample=False, max_new_tokens=10)
    for beams, penalty, early, end in [(3, 1.0, False, plain[0]), (5, 0.7, False, plain[2]), (4, 1.5, True, plain[2]),
                                       (3, -1.0, False, plain[0]), (2, -2.0, True, plain[2]), (4, 1.0, False, 50256)]:
        settings = dict(num_beams=beams, length_penalty=penalty, early_stopping=early, do_sample=False, max_new_tokens=10)
        golden["beam"].append({"beams": beams, "length_penalty": penalty, "early_stopping": early, "max_tokens": 10, "end_token": end,
                               "outputs": [generate(p, eos_token_id=end, **settings) for p in prompts]})

    clip = CLIPModel.from_pretrained(out("tiny-clip"), torch_dtype=torch.float32).eval()
    clip47, clean_up = transformers47()
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = CLIPTokenizerFast(*clip_vocab_files(tmp))
        published_clip_tokenizer = clip47(tmp)
    processor = CLIPImageProcessor()
    golden["magic"] = {"images": [os.path.relpath(p, ROOT) for p in MAGIC_IMAGES], "settings": []}
    features = []
    for path in MAGIC_IMAGES:
        pixels = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features.append(clip.get_image_features(pixel_values=pixels))

    def published(features, prompt, **settings):   # the published text path: 4.7.0's decode clean-up and slow CLIP tokenizer
        return magic_reference.magic_search(lm, tokenizer, clip, published_clip_tokenizer, features, prompt, clean_up=clean_up, **settings)

    def caption_text(ids):   # the published parse_output_token_list (no start tokens in this vocabulary)
        return " ".join(clean_up(tokenizer.decode(ids[:ids.index(50256)] if 50256 in ids else ids, clean_up_tokenization_spaces=False)).split())

    for settings in MAGIC_SETTINGS:
        outputs = [published(f, [50256], **settings) for f in features]
        current = [magic_reference.magic_search(lm, tokenizer, clip, clip_tokenizer, f, [50256], **settings) for f in features]
        blind = [published(f, [50256], **dict(settings, beta=0.0)) for f in features]
        # The fixture must exercise the image: captions differ across images and from beta = 0.
        assert len({tuple(o) for o in outputs}) > 1 and any(o != b for o, b in zip(outputs, blind)), settings
        golden["magic"]["settings"].append(dict(settings, outputs=outputs, outputs_current=current, texts=[caption_text(o) for o in outputs]))
    differing = sum(o != c for s in golden["magic"]["settings"] for o, c in zip(s["outputs"], s["outputs_current"]))
    assert differing > 0, "the published and today's text paths must choose differently somewhere"
    # Story mode as published: "title <|endoftext|>" as the prompt, k 5, alpha 0.6, beta 0.15 (fewer tokens here).
    story_prompt = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(STORY_TITLE + " " + tokenizer.eos_token))
    story = dict(k=5, alpha=0.6, beta=0.15, max_tokens=30)
    outputs = [published(f, story_prompt, **story) for f in features[:3]]

    def story_text(ids):   # the published parse_generated_result, five sentences
        generated = clean_up(tokenizer.decode(story_prompt + ids, clean_up_tokenization_spaces=False)).split(tokenizer.eos_token)[1].strip()
        pieces = generated.split(".")
        kept = ".".join(pieces[:5])
        return kept.strip(".") + "." if len(pieces) > 5 else kept.strip(".").strip()
    golden["magic"]["story"] = dict(story, title=STORY_TITLE, prompt=story_prompt, outputs=outputs, texts=[story_text(o) for o in outputs])
    golden["magic"]["targeted"] = magic_targeted_steps(tokenizer, clip, published_clip_tokenizer, clean_up, features[0])
    write_json(golden, "decoding", "golden.json")
    print(f"decoding: contrastive, beam and MAGiC goldens ({differing} captions differ between the published and today's text paths)")


# Texts whose last token a MAGiC candidate completes: accents, contractions, punctuation, a half-decoded character
# (U+FFFD), CJK and emoji.
MAGIC_TARGETED_TEXTS = [" a man at the caf\u00e9", " the dog's toy", " they don't", " a Na\u00efve sign!", " the zebra, the truck.",
                        " a cat\ufffd", " a sign \u65e5\u672c", " a smiling dog \U0001f600", " R\u00e9sum\u00e9 of \u00c9T\u00c9", " a \u201cquote\u201d"]


def magic_targeted_steps(tokenizer, clip, published_clip_tokenizer, clean_up, image_features):
    """One MAGiC step's image term (the softmax over candidates of CLIP's logits for the published candidate texts) where
    one candidate completes each of MAGIC_TARGETED_TEXTS after the rest of its tokens, beside five ordinary candidates."""
    image = image_features / image_features.norm(dim=-1, keepdim=True)
    steps = []
    for text in MAGIC_TARGETED_TEXTS:
        ids = tokenizer.encode(text)
        generated, candidates = ids[:-1], [ids[-1], 257, 13, 11, 262, 50256]
        texts = [clean_up(tokenizer.decode(generated + [c], clean_up_tokenization_spaces=False)) for c in candidates]
        tokens = published_clip_tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            features = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            features = features / features.norm(dim=-1, keepdim=True)
            scores = (clip.logit_scale.exp() * torch.matmul(features, image.T)).view(-1).softmax(dim=0)
        steps.append({"text": text, "generated": generated, "candidates": candidates, "clip_texts": texts,
                      "clip_ids": [[i for i, m in zip(row, mask) if m] for row, mask in zip(tokens["input_ids"].tolist(), tokens["attention_mask"].tolist())],
                      "scores": scores.tolist()})
    return steps


# ---------------------------------------------------------------- ASIF goldens

def asif_relative(embeddings, anchors, k, p):
    """ASIF's relative representation (Norelli et al. 2022): cosine similarities to the anchors,
    the k largest kept (ties by anchor order), raised to the power p, L2-normalised."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    similarities = e @ a.T
    kept = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    relative = np.zeros_like(similarities)
    rows = np.arange(len(e))[:, None]
    relative[rows, kept] = similarities[rows, kept] ** p
    return relative / np.linalg.norm(relative, axis=1, keepdims=True)


def make_asif_goldens():
    """numpy ASIF on random embeddings: image-to-text and text-to-image scores and rankings."""
    rng = np.random.default_rng(11)
    anchors_image = rng.standard_normal((400, 24)).astype(np.float32)
    anchors_text = rng.standard_normal((400, 16)).astype(np.float32)
    queries_image = rng.standard_normal((7, 24)).astype(np.float32)
    queries_text = rng.standard_normal((9, 16)).astype(np.float32)
    tensors = {"anchors_image": anchors_image, "anchors_text": anchors_text, "queries_image": queries_image, "queries_text": queries_text}
    rankings = {}
    for k, p in [(40, 8.0), (400, 1.0), (5, 3.0)]:
        image = asif_relative(queries_image.astype(np.float64), anchors_image.astype(np.float64), k, p)
        text = asif_relative(queries_text.astype(np.float64), anchors_text.astype(np.float64), k, p)
        scores = image @ text.T                                                   # [images, texts]
        tensors[f"scores_k{k}_p{int(p)}"] = scores.astype(np.float32)
        rankings[f"k{k}_p{int(p)}"] = {"image_to_text": np.argsort(-scores, axis=1, kind="stable").tolist(),
                                       "text_to_image": np.argsort(-scores.T, axis=1, kind="stable").tolist()}
    save_file(tensors, out("asif", "golden.safetensors"))
    write_json(rankings, "asif", "rankings.json")

def make_clip_manifests():
    """Weight names and shapes of the real CLIP checkpoints' architectures (no weights: meta device)."""
    from transformers import CLIPConfig, CLIPModel
    real = {
        "clip-vit-base-patch32": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12, 32, 224), projection=512),
        "clip-vit-base-patch16": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12, 16, 224), projection=512),
        "clip-vit-large-patch14": dict(text=(768, 3072, 12, 12), vision=(1024, 4096, 24, 16, 14, 224), projection=768),
    }
    for name, spec in real.items():
        t, v = spec["text"], spec["vision"]
        config = CLIPConfig(
            text_config=dict(hidden_size=t[0], intermediate_size=t[1], num_hidden_layers=t[2], num_attention_heads=t[3]),
            vision_config=dict(hidden_size=v[0], intermediate_size=v[1], num_hidden_layers=v[2], num_attention_heads=v[3],
                               patch_size=v[4], image_size=v[5]),
            projection_dim=spec["projection"])
        config.architectures = ["CLIPModel"]
        with torch.device("meta"):
            model = CLIPModel(config)
        config.to_json_file(out("clip-configs", name, "config.json"))
        write_json({k: list(p.shape) for k, p in model.state_dict().items()}, "clip-configs", name, "manifest.json")


SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "A cheetah is running behind its prey.",
    "A zebra stands in tall dry grass.", "A dog sits beside a bicycle.", "A truck is parked on the street.",
    "What color is the dog?", "How many people are in the picture?", "Is it raining?",
    "The quick brown fox jumps over the lazy dog.", "Stitch composes frozen models without training.",
    "CLIP scores images against text.", "GPT-2 writes captions one token at a time.",
    "naïve café owners serve crème brûlée", "東京は日本の首都です。", "¿Dónde está la biblioteca?",
    "Привет, как дела?", "emoji 😀 in a sentence", "", "a", "UPPER CASE SENTENCE", "numbers 1 2 3 4 5 6 7 8 9",
    "hyphenated-words and under_scores", "a very " + "long " * 80 + "sentence", "tabs\tand\nnewlines",
    "The Eiffel Tower is in Paris.", "Bananas are yellow.", "The sky is blue during the day.",
    "A kitchen with a stove and a refrigerator.", "A group of people standing on a beach.",
    "A plate of food with broccoli and rice.", "A cat sleeping on a laptop keyboard.",
    "An airplane flying over a city.", "A red fire hydrant on a sidewalk.", "Children playing soccer in a park.",
    "A bowl of fruit on a wooden table.", "A train arriving at the station.", "A person surfing a large wave.",
    "A giraffe eating leaves from a tree.", "Snow covered mountains under a clear sky.",
    "A clock tower in the middle of a town.", "Boats docked in a harbor at sunset.", "A skateboarder doing a trick.",
]


def make_minilm_goldens():
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(MINILM, device="cpu")
    embeddings = model.encode(SENTENCES, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    save_file({"embeddings": embeddings.astype(np.float32)}, out("minilm", "golden.safetensors"))
    write_json({"sentences": SENTENCES}, "minilm", "golden.json")
    print(f"minilm: {len(SENTENCES)} sentences")


def make_efficientnet_goldens():
    """The efficientnet_lite_pytorch reference network on the real weights (Scripts/fetch-test-models) and the ImageNet pixels above."""
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file
    model = EfficientNet.from_name("efficientnet-lite0").eval()
    state = torch.load(os.path.join(EFFICIENTNET, "pytorch_model.bin"), weights_only=True)
    model.load_state_dict(state)
    from safetensors.numpy import load_file as load_np
    pixels = load_np(out("images", "imagenet_pixels.safetensors"))
    golden = {}
    with torch.no_grad():
        for name, x in pixels.items():
            x = torch.from_numpy(x)[None]
            features = model._avg_pooling(model.extract_features(x)).flatten(1)
            golden[f"{name}.features"] = features[0].numpy()
            golden[f"{name}.logits"] = model._fc(features)[0].numpy()
            print(f"efficientnet {name}: top-5 {model(x)[0].topk(5).indices.tolist()}")
    save_file(golden, out("efficientnet", "golden.safetensors"))


def make_yolox_goldens():
    """onnxruntime on the real YOLOX-Nano file: letterbox checksums, raw head rows (every 23rd
    cell plus every cell scoring over 0.05) and the post-processed detections."""
    import zlib
    sess = yolox_reference.session(os.path.join(YOLOX, "yolox_nano.onnx"), 1)
    golden, rows_of = {}, {}
    for path in [os.path.join(IMAGES, "coffee.png"), os.path.join(IMAGES, "chelsea.png"), out("images", "rgb.jpg")]:
        raw, ratio, pixels, detections = yolox_reference.detect(sess, path)
        scores = raw[:, 4:5] * raw[:, 5:]
        rows = sorted(set(range(0, len(raw), 23)) | set(np.nonzero(scores.max(1) > 0.05)[0].tolist()))
        rows_of[f"{os.path.basename(path)}.rows"] = np.array(rows, dtype=np.float32)
        rows_of[f"{os.path.basename(path)}.raw"] = raw[rows]
        golden[os.path.basename(path)] = {
            "letterbox_crc32": zlib.crc32(pixels.astype(np.uint8).tobytes()),
            "ratio": ratio,
            "detections": [{"class": c, "score": score, "box": box} for c, score, box in detections],
        }
        print(f"yolox {os.path.basename(path)}: {len(rows)} rows, detections {[(c, round(s, 3)) for c, s, _ in detections]}")
    write_json(golden, "yolox", "golden.json")
    save_file(rows_of, out("yolox", "raw_rows.safetensors"))


CAPTIONER_IMAGES = [os.path.join(IMAGES, "coffee.png"), os.path.join(IMAGES, "chelsea.png"), out("images", "rgb.jpg")]


def make_captioner_goldens():
    """A tiny random VisionEncoderDecoderModel (ViT encoder 24 wide, GPT-2 decoder 32 wide with
    cross-attention, so enc_to_dec_proj is used; vocabulary cut to 1000 ids; initialised 10x wider than
    the default so that a random decoder does not just echo its start token) and transformers' decoder
    logits and generate() captions (greedy and beam search) for three images."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel, VisionEncoderDecoderModel
    torch.manual_seed(2)
    start = 999
    encoder = ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                 image_size=32, patch_size=8, initializer_range=0.2))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_positions=64, n_embd=32, n_layer=2, n_head=4, add_cross_attention=True,
                                         is_decoder=True, bos_token_id=start, eos_token_id=start, initializer_range=0.2))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = start
    model.config.pad_token_id = start
    model.config.eos_token_id = start
    save_tiny(model, "tiny-vit-gpt2")
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(out("tiny-vit-gpt2"))
    model = VisionEncoderDecoderModel.from_pretrained(out("tiny-vit-gpt2"), torch_dtype=torch.float32).eval()
    decoder_input = [start, 5, 17, 300, 42]
    tensors, golden = {}, {"images": [os.path.relpath(p, ROOT) for p in CAPTIONER_IMAGES],
                           "decoder_input": decoder_input, "settings": []}
    pixels = [processor(images=[Image.open(p).convert("RGB")], return_tensors="pt")["pixel_values"] for p in CAPTIONER_IMAGES]
    with torch.no_grad():
        for i, x in enumerate(pixels):
            tensors[f"pixels.{i}"] = x[0].numpy()
            tensors[f"logits.{i}"] = model(pixel_values=x, decoder_input_ids=torch.tensor([decoder_input])).logits[0].numpy()

        def generate(x, **settings):
            return model.generate(pixel_values=x, do_sample=False, **settings)[0, 1:].tolist()
        # End tokens the model actually emits, so that hypotheses finish early under beam search.
        plain = generate(pixels[0], num_beams=1, max_new_tokens=12)
        for beams, penalty, early, end in [(1, 1.0, False, start), (4, 1.0, False, start), (3, 1.0, False, plain[3]),
                                           (4, 0.7, True, plain[1]), (2, 1.5, False, plain[5])]:
            settings = dict(num_beams=beams, length_penalty=penalty, early_stopping=early, max_new_tokens=12, eos_token_id=end)
            golden["settings"].append(dict(beams=beams, length_penalty=penalty, early_stopping=early, max_tokens=12, end_token=end,
                                           outputs=[generate(x, **settings) for x in pixels]))
    assert len({tuple(o) for o in golden["settings"][1]["outputs"]}) > 1, "captions must depend on the image"
    save_file(tensors, out("tiny-vit-gpt2", "golden.safetensors"))
    write_json(golden, "tiny-vit-gpt2", "golden.json")
    print("captioner:", [s["outputs"][0] for s in golden["settings"]])


def make_metric_goldens():
    """pycocoevalcap on 60 synthetic caption groups (a candidate, 5 references): its PTBTokenizer's
    tokens (Stanford CoreNLP, needs java) and BLEU-1..4, ROUGE-L, CIDEr-D and METEOR (its jar) per image
    and over the corpus; and nltk's Porter stemmer (original algorithm) on every token."""
    from nltk.stem.porter import PorterStemmer
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    rng = random.Random(7)
    subjects = ["a man", "A woman", "two dogs", "the cat", "a group of people", "an old red truck", "three zebras", "a child's kite",
                "some bikes", "a big brown bear", "the players", "a plate of food"]
    verbs = ["is standing", "are running", "sits", "is parked", "are grazing", "is flying", "stand", "is eating", "walks", "is sleeping",
             "isn't moving", "are playing"]
    places = ["on the grass", "next to a truck", "in a field", "near the water.", "on a busy street,", "in the kitchen!", "at the beach",
              "under a tree", "by the road", "in a room", "on a snowy hill", "behind the fence"]
    extras = ["", "", "", " with a dog", " while it rains", " (at night)", " in 2019", " - happily", " and smiles", "; it's sunny",
              ' "quietly"', " near 3.5 meters of rope"]

    def sentence():
        return rng.choice(subjects) + " " + rng.choice(verbs) + " " + rng.choice(places) + rng.choice(extras) + rng.choice(["", ".", " .", "!"])
    groups = [{"candidate": sentence(), "references": [sentence() for _ in range(5)]} for _ in range(60)]
    # Some candidates share words with their references, some equal one, one is empty of overlap.
    for g in groups[:20]:
        g["candidate"] = g["references"][0].replace("the", "a", 1)
    groups[20]["candidate"] = groups[20]["references"][2]
    raw = {str(i): [{"caption": c} for c in [g["candidate"]] + g["references"]] for i, g in enumerate(groups)}
    tokenized = PTBTokenizer().tokenize(raw)
    res = {k: [v[0]] for k, v in tokenized.items()}
    gts = {k: v[1:] for k, v in tokenized.items()}
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res)
    cider, cider_per_image = Cider().compute_score(gts, res)
    rouge, rouge_per_image = Rouge().compute_score(gts, res)
    from pycocoevalcap.meteor.meteor import Meteor   # the official METEOR 1.5 jar (needs java)
    meteor, meteor_per_image = Meteor().compute_score(gts, res)
    stemmer = PorterStemmer(mode=PorterStemmer.ORIGINAL_ALGORITHM)
    words = sorted({w for v in tokenized.values() for c in v for w in c.split()} | set(STEMMER_WORDS))
    write_json({
        "groups": [dict(g, tokenized_candidate=res[str(i)][0], tokenized_references=gts[str(i)]) for i, g in enumerate(groups)],
        "bleu": bleu, "bleu_per_image": [[float(x) for x in b] for b in bleu_per_image],
        "cider": float(cider), "cider_per_image": [float(x) for x in cider_per_image],
        "rouge_l": float(rouge), "rouge_l_per_image": [float(x) for x in rouge_per_image],
        "meteor": float(meteor), "meteor_per_image": [float(x) for x in meteor_per_image],
        "stems": {w: stemmer.stem(w, to_lowercase=False) for w in words},
    }, "metrics", "captions.json")
    print(f"metrics: BLEU-4 {bleu[3]:.4f}, CIDEr-D {cider:.4f}, ROUGE-L {rouge:.4f}, {len(words)} stemmed words")



# Pieces of the captions zero-shot captioners write and people type: markup-like tokens, entities, quotes, runs of
# punctuation, dashes, numbers, abbreviations, contractions, non-Latin scripts, emoji, invisible and control characters.
ADVERSARIAL_PIECES = """<|endoftext|> <-pad-> <pad> <unk> </s> <s> <br/> <br\u0020/> <b> </b> <img\u0020src='a.jpg'> <a\u0020href="x.html"> <!--\u0020c\u0020--> [SEP] [CLS] {x} (x) [a] << >> <3 a<b x>y &lt; &gt; &amp; &AMP; &quot; &apos; &nbsp; &mdash; &#39; &eacute; &HT; &Uuml;
" ' ` `` '' \u201c \u201d \u2018 \u2019 \u00ab \u00bb \u201e \u201a \u2039 \u203a \u0091 \u0092 \u0093 \u0094
! !! !!! ? ?! !? ?? ... .. .... ..... . . . . \u2026 , ; : :: - -- --- ---- ----- \u2013 \u2014 \u2015 \u2010 \u2011 _ __ * ** \\* # ## @ / \\ | = + % ~ ^ \u2022 \u00b7 \u00b0 \u00d7 \u00f7 \u00a9 \u00ae \u2122 \u00a7 \u00b6 \u00a1 \u00bf \u3002 \u3001
3 42 3.5 1,000 10,000.50 1/2 3/4 1\u00201/2 \u00bd \u00bc \u2153 \u2155 10-12 2019 1990s '90s 3rd 21st 5pm 5:30 12:30:45 $5 US$5 #1 50% -5 +3 2x x2 4K 1080p 555-1234 (555)\u0020123-4567 +1\u0020555\u0020123\u00204567 555.123.4567 12/25/2019 3-4 \u00b2 \u00b3 \u2082 H\u2082O 10\u00b0C \u20ac5 \u00a310 \u00a2 \u00a5100 \u0660\u0661
mr. Mr. Dr. dr. st. St. U.S. u.s. U.S.A. D.C. a.m. p.m. etc. e.g. i.e. vs. Inc. Co. Jan. Feb. Mt. No. no. fig. Ltd. Jr. Calif. Ph.D. a.k.a. A. I. Pty. Wash. Mass. ca. approx. Ave. Gov.
don't Don't DON'T can't cannot CANNOT Cannot won't isn't it's It's dog's dogs' they're we've I'll I'd I'm y'all o'clock rock'n'roll 'n' gonna Gonna wanna gotta lemme gimme 'tis 'twas ma'am don\u2019t it\u2019s o\u2019clock d'oeuvres l'amour 'em 'til 'till 'cause c'mon ol' Dunkin' somethin' li'l nat'l cont'd e'er ev'ry s'mores nor'easter O'Neil can\u2019t hasn't ain't
caf\u00e9 na\u00efve r\u00e9sum\u00e9 Z\u00fcrich S\u00e3o ni\u00f1o f\u00e7ade \u00c5ngstr\u00f6m stra\u00dfe \u0391\u0398\u0397\u039d\u0391 \u03a3\u03bf\u03c6\u03cc\u03c2 \u039f\u0394\u039f\u03a3 \u041c\u043e\u0441\u043a\u0432\u0430 \u043a\u043e\u0442 \u5317\u4eac \u732b \u6771\u4eac\u30bf\u30ef\u30fc \ud55c\uad6d \u0639\u0631\u0628\u064a \u05e2\u05d1\u05e8\u05d9\u05ea \u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22 \u0130stanbul \u01c5 \ufb01sh \uff46\uff55\uff4c\uff4c \uff37 e\u0301 n\u0303 a\u0308b \u00c9T\u00c9
\U0001f600 \U0001f436 \U0001f44d\U0001f3fd \U0001f1fa\U0001f1f8 \u2764\ufe0f \u263a \u2713 \u2605 \u2665 \u2192 \u221e \u2248 \U0001d400
http://example.com https://www.flickr.com/photos/123 www.google.com example.org images.example.net/a.jpg foo@bar.com <foo@bar.com> #sunset @john image.jpg photo_1.png file.txt C++ C# F# AT&T S&P R&D Q&A and/or w/ w/o 24/7 1/2-inch -LRB- -RRB- pro- anti-
:) :-) :( ;) :D :P =) ^_^ -_- (^_^) o_O T_T :-/ (-_-)""".split()
ADVERSARIAL_INVISIBLE = ["\u200b", "\u200d", "\ufeff", "\u00ad", "\u00a0", "\u2009", "\u3000", "\t", "  ", "\u200e", "\x7f", "\x01", "\x1b", "\u2060"]
# Line terminators other than LF (pycocoevalcap replaces LF only: the tokenizer then starts a new line there).
ADVERSARIAL_LINE_BREAKS = ["\r", "\u2028", "\u2029", "\x0b", "\x0c", "\r\n"]
ADVERSARIAL_WORDS = """a an the A The THE In in About He She You It This There One man woman dog dogs cat child's kite people group
bus truck street field beach sitting standing next to on of with and at near red big small two three is are
playing holding riding looking down up water kitchen table pizza plate train tennis baseball snow sky""".split()


def adversarial_caption(rng, line_breaks):
    """A caption-like string: words with pieces inserted between them or glued to them, cases changed, spacing varied."""
    tokens = [rng.choice(ADVERSARIAL_WORDS) for _ in range(rng.randint(1, 12))]
    for _ in range(rng.randint(0, 5)):
        piece = rng.choice(ADVERSARIAL_PIECES)
        position = rng.randint(0, len(tokens))
        how = rng.random()
        if how < 0.5 or not tokens:
            tokens.insert(position, piece)
        elif how < 0.75:
            index = min(position, len(tokens) - 1)
            tokens[index] = tokens[index] + piece
        else:
            index = min(position, len(tokens) - 1)
            tokens[index] = piece + tokens[index]
    for i in range(len(tokens)):
        r = rng.random()
        if r < 0.08:
            tokens[i] = tokens[i].upper()
        elif r < 0.16:
            tokens[i] = tokens[i].capitalize()
    text = ""
    for i, token in enumerate(tokens):
        if i:
            r = rng.random()
            text += rng.choice(ADVERSARIAL_INVISIBLE) if r < 0.06 else "" if r < 0.1 else " "
        text += token
    if line_breaks and rng.random() < 0.02:
        position = rng.randint(1, max(1, len(text) - 1))   # never at the end: a CR there would join two captions' lines
        text = text[:position] + rng.choice(ADVERSARIAL_LINE_BREAKS) + text[position:]
    ending = rng.random()
    if ending < 0.3:
        text += rng.choice([".", " .", "!", "!!", "?", "...", " \u2026", ".\"", "'", ")", " :)"])
    elif ending < 0.35:
        text = " " + text + "  "
    return text


def random_bmp_text(rng):
    """Characters drawn from the whole Basic Multilingual Plane, surrogates excepted, with ASCII letters and spaces."""
    characters = []
    for _ in range(rng.randint(1, 16)):
        r = rng.random()
        if r < 0.3:
            characters.append(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,'-"))
        else:
            code = rng.randint(0x20, 0xFFFD)
            if not 0xD800 <= code <= 0xDFFF and code != 0x0A:
                characters.append(chr(code))
    return "".join(characters)


def corenlp_ptb_lines(text):
    """The real tokenizer's output lines for `text`, run as pycocoevalcap runs it (CoreNLP 3.4.1, -preserveLines -lowerCase)."""
    import subprocess
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    folder = os.path.dirname(os.path.abspath(ptb.__file__))
    with tempfile.NamedTemporaryFile(delete=False, dir=folder) as f:
        f.write(text.encode())
    try:
        output = subprocess.run(["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
                                 "-preserveLines", "-lowerCase", os.path.basename(f.name)], cwd=folder, capture_output=True, check=True).stdout
    finally:
        os.remove(f.name)
    return output.decode().split("\n")



def make_ptb_character_classes():
    """Sources/StitchTokenizers/PTBCharacterClasses.swift: the Unicode classes the CoreNLP 3.4.1 scanner was generated
    with (its letters, decimal digits and upper-case letters in the Basic Multilingual Plane, older than this Swift's
    Unicode), measured by running the tokenizer on every code unit in contexts where only that class decides the output."""
    codes = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF and c not in (0x0A, 0x0B, 0x0C, 0x0D, 0x85, 0x2028, 0x2029)]

    def where(lines, probe, accept):
        return {c for c, line in zip(codes, lines) if accept(c, line, probe(chr(c)))}
    # After "B'" two letters make one word (a different class, or an ASCII letter that forms 'll, 'm, 's, 'd, leaves two).
    probe = lambda c: "B'" + c + c
    letters = where(corenlp_ptb_lines("\n".join(probe(chr(c)) + " " for c in codes)), probe, lambda c, line, text: line and " " not in line)
    letters = {c for c in letters if c >= 0x80} | set(range(0x41, 0x5B)) | set(range(0x61, 0x7B))
    probe = lambda c: "+" + c   # a signed number
    digits = where(corenlp_ptb_lines("\n".join(probe(chr(c)) for c in codes)), probe, lambda c, line, text: line == text)
    # An abbreviation ends a sentence before a space and a capital (or another space, which is not a capital).
    spaces = {0x09, 0x20, 0xA0, 0x3000} | set(range(0x2000, 0x200B))
    probe = lambda c: "etc. " + c
    uppercase = where(corenlp_ptb_lines("\n".join(probe(chr(c)) for c in codes)), probe,
                      lambda c, line, text: line.split(" ")[:2] == ["etc.", "."] and c not in spaces | {ord(".")})

    def ranges(name, values):
        spans = []
        for c in sorted(values):
            if spans and spans[-1][1] == c - 1:
                spans[-1][1] = c
            else:
                spans.append([c, c])
        items = [f"0x{a:04X}...0x{b:04X}" for a, b in spans]
        lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
        return f"    static let {name}: [ClosedRange<UInt16>] = [\n" + ",\n".join("        " + line for line in lines) + ",\n    ]\n"
    source = ("// Written by Tests/Fixtures/make_fixtures.py (make_ptb_character_classes) from CoreNLP 3.4.1's tokenizer; do not edit.\n\n"
              "/// The character classes of the PTB scanner (its Unicode version's letters, decimal digits and capitals).\n"
              "enum PTBCharacterClasses {\n" + ranges("letters", letters) + ranges("digits", digits) + ranges("uppercase", uppercase) + "}\n")
    with open(os.path.join(ROOT, "Sources", "StitchTokenizers", "PTBCharacterClasses.swift"), "w") as f:
        f.write(source)
    print(f"ptb classes: {len(letters)} letters, {len(digits)} digits, {len(uppercase)} capitals")

def ascii_soup(rng):
    """Printable ASCII at random, half of it letters and digits: markup, URLs, e-mail, smileys, numbers, abbreviations."""
    pool, letters = [chr(c) for c in range(0x20, 0x7F)] + ["\t"], "abcdeiklmnorstuxyzABCDIKLMNORSTUXY0123456789"
    return "".join(rng.choice(pool) if rng.random() < 0.5 else rng.choice(letters) for _ in range(rng.randint(1, 30)))


def greek_sigmas(rng):
    """Capital sigmas inside and at the ends of words (Java lower-cases them to a final sigma by its word boundaries)."""
    pieces = ["\u039f\u0394\u039f\u03a3", "\u03a3", "\u0391\u03a3", "\u03c3\u03a3", "\u03a3\u0391", "\u03a3'", "\u03a3.", "\u03a3-",
              "\u03a35", "\u03a3\u0301", "\u03a3\u200d", "5\u03a3", "a", "-", ".", "'", "5", " ", "_", "\u2019", "x", ","]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))


def make_ptb_goldens():
    """Stanford PTBTokenizer (pycocoevalcap's jar, needs java) on 3,000 adversarial captions joined into one text as the
    evaluation joins them, 3,000 strings of printable ASCII, 1,000 of capital sigmas in words and 1,000 of characters from
    the whole Basic Multilingual Plane."""
    rng = random.Random(11)
    streams = {
        "captions": "\n".join(adversarial_caption(rng, line_breaks=True).replace("\n", " ") for _ in range(3000)),
        "ascii": "\n".join(ascii_soup(rng) for _ in range(3000)),
        "sigma": "\n".join(greek_sigmas(rng) for _ in range(1000)),
        "bmp": "\n".join(random_bmp_text(rng) for _ in range(1000)),
    }
    write_json({name: {"text": text, "lines": corenlp_ptb_lines(text)} for name, text in streams.items()}, "metrics", "ptb.json")
    print("ptb:", {name: len(text) for name, text in streams.items()})


def coco_caption_scores(references, results):
    """pycocoevalcap's COCOEvalCap.evaluate without pycocotools: the images of the results in the order of the references'
    images list, their annotations in file order, both tokenized by its PTBTokenizer, then BLEU, METEOR, ROUGE-L, CIDEr-D."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    answered = {r["image_id"] for r in results}
    image_ids = [image["id"] for image in references["images"] if image["id"] in answered]
    gts = {i: [] for i in image_ids}
    for annotation in references["annotations"]:
        if annotation["image_id"] in gts:
            gts[annotation["image_id"]].append(annotation)
    res = {i: [] for i in image_ids}
    for result in results:
        res[result["image_id"]].append(result)
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    scores = {}
    for scorer, names in [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]), (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE-L"]), (Cider(), ["CIDEr-D"])]:
        score, per_image = scorer.compute_score(gts, res)
        if len(names) == 1:
            score, per_image = [score], [per_image]
        for name, value, values in zip(names, score, per_image):
            scores[name] = float(value)
            scores[name + " per image"] = {str(i): float(v) for i, v in zip(gts.keys(), values)}
    return scores


def make_adversarial_caption_evaluations():
    """Three COCO-format evaluations of 1,000+ answered images (ten more left unanswered) with adversarial references
    and results, scored by pycocoevalcap. The third holds line terminators inside captions, which shift pycocoevalcap's tokenized captions between images."""
    for index, (images, seed, line_breaks) in enumerate([(1020, 21, False), (1200, 22, False), (1020, 23, True)], start=1):
        rng = random.Random(seed)
        ids = rng.sample(range(1, 10 * images), images)
        listed = ids[:]
        rng.shuffle(listed)   # the images list in another order than the annotations
        annotations = [{"image_id": i, "id": n, "caption": adversarial_caption(rng, line_breaks)} for n, i in
                       enumerate(i for i in ids for _ in range(5))]
        rng.shuffle(annotations)
        references = {"images": [{"id": i} for i in listed], "annotations": annotations}
        results = []
        for i in rng.sample(ids, images - 10):   # ten reference images left without a result
            own = [a["caption"] for a in annotations if a["image_id"] == i]
            r = rng.random()
            caption = rng.choice(own) if r < 0.1 else "" if r < 0.12 else adversarial_caption(rng, line_breaks) if r < 0.6 else \
                rng.choice(own).replace("a", "the", 1) + rng.choice(["", " <|endoftext|>", " <-pad-> <-pad->", "!!!", " \u2026"])
            results.append({"image_id": i, "caption": caption})
        scores = coco_caption_scores(references, results)
        name = f"adversarial-{index}"
        write_json(references, "metrics", name + "-references.json")
        write_json(results, "metrics", name + "-results.json")
        write_json(scores, "metrics", name + "-scores.json")
        print(name, {k: round(v, 4) for k, v in scores.items() if "per image" not in k})

# Words exercising every step of the Porter stemmer (the examples of Porter 1980 and more).
STEMMER_WORDS = """caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized hopping
tanned falling hissing fizzed failing filing happy sky relational conditional rational valenci hesitanci digitizer conformabli
radicalli differentli vileli analogousli vietnamization predication operator feudalism decisiveness hopefulness callousness
formaliti sensitiviti sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival allowance
inference airliner gyroscopic adjustable defensible irritant replacement adjustment dependent adoption homologou communism
activate angulariti homologous effective bowdlerize probate rate cease controll roll generalizations oscillators running
ran runs easily fairly cries dying lying agreement""".split()


def make_pica_goldens():
    """PICa's in-context example ranking in numpy: cos(question, pool question) + cos(image, pool image)
    on random unit embeddings, best first (stable on ties)."""
    rng = np.random.default_rng(13)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    pool_questions, pool_images = unit(rng.normal(size=(50, 16))), unit(rng.normal(size=(50, 24)))
    questions, images = unit(rng.normal(size=(5, 16))), unit(rng.normal(size=(5, 24)))
    scores = questions.astype(np.float64) @ pool_questions.T.astype(np.float64) + images.astype(np.float64) @ pool_images.T.astype(np.float64)
    rankings = [np.argsort(-row, kind="stable").tolist() for row in scores]
    save_file({"pool_questions": pool_questions, "pool_images": pool_images, "questions": questions, "images": images}, out("pica", "embeddings.safetensors"))
    # Feature files as the published code reads them (np.load of float32 .npy) and its selection expression:
    # np.matmul(train, val[line]) for questions plus images, then argsort()[-n:][::-1].
    train_q, train_i, val_q, val_i = unit(rng.normal(size=(400, 32))), unit(rng.normal(size=(400, 32))), unit(rng.normal(size=(6, 32))), unit(rng.normal(size=(6, 32)))
    for name, array in [("train_question", train_q), ("train_image", train_i), ("val_question", val_q), ("val_image", val_i)]:
        np.save(out("pica", f"{name}.npy"), array)
    n = 16 * 5
    published = [(np.matmul(train_q, val_q[line, :]) + np.matmul(train_i, val_i[line, :])).argsort()[-n:][::-1].tolist() for line in range(len(val_q))]
    write_json({"rankings": rankings, "published_selection": published}, "pica", "rankings.json")
    print("pica: example rankings for 5 queries over a pool of 50")


def make_pica_prompt_goldens():
    """PICa's prompts and answer clean-up as the published code (microsoft/PICa, gpt3_api_okvqa.py) builds them,
    written here from its logic: the header, per example "Context: %s\\n===\\n" and "Q: %s\\nA: %s\\n\\n===\\n",
    then the test's context and "Q: %s\\nA:"; process_answer on answers a language model may give."""
    rng = random.Random(2021)
    words = ["a", "dog", "The", "man", "surfboard", "Q:", "A:", "===", "café", "naïve", "东京", "😀", "don't", "3.5", "1,000",
             "Mr.", "U.S.A.", "to", "an", "the", "ΣΑΣ", "İstanbul", "-", "?", "!", "  ", "\t", "\n", "", ".", ","]

    def text(n):
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, n)))

    def published_prompt(examples, test):
        prompt = "Please answer the question according to the above context.\n===\n"
        for context, question, answer in examples:
            prompt += "Context: %s\n===\n" % context
            prompt += "Q: %s\nA: %s\n\n===\n" % (question, answer)
        prompt += "Context: %s\n===\n" % test[0]
        prompt += "Q: %s\nA:" % test[1]
        return prompt

    def process_answer(answer):
        answer = answer.replace(".", "").replace(",", "").lower()
        return " ".join(item for item in answer.split(" ") if item not in {"a", "an", "the", "to", ""})

    cases = []
    for shots in [0, 1, 2, 5, 16]:
        for _ in range(4):
            examples = [[text(12), text(8), text(3)] for _ in range(shots)]
            test = [text(12), text(8)]
            cases.append({"examples": examples, "test": test, "prompt": published_prompt(examples, test)})
    answers = [" " + text(5) for _ in range(150)] + [text(5) for _ in range(100)] + [" The Eiffel Tower.", " a dog, a cat", "to be", "  two  "]
    write_json({"cases": cases, "answers": answers, "cleaned": [process_answer(a) for a in answers]}, "pica", "prompts.json")
    print(f"pica: {len(cases)} prompts and {len(answers)} answers as the published code builds and cleans them")


def make_socratic_goldens():
    """Socratic captioning's scene and prompt as the published image-captioning notebook (google-research/socraticmodels)
    builds them, written here from its logic (get_nn_text: text_feats @ img_feats.T, argsort reversed; the two-stage
    people question; the five-line f-string), on random unit embeddings for the real Prompts/ lists (places, types and
    people whole, 500 of the objects) and 12 images, in float32 as the notebook's features are."""
    rng = np.random.default_rng(2022)
    prompts_dir = os.path.join(ROOT, "Prompts")

    def lines(name):
        return [l.strip() for l in open(os.path.join(prompts_dir, name), encoding="utf-8") if l.strip()]
    place_texts, object_texts = lines("socratic_places.txt"), lines("socratic_objects.txt")
    img_types, counts = lines("socratic_image_types.txt"), lines("socratic_people.txt")
    object_rows = sorted(rng.choice(len(object_texts), 500, replace=False).tolist())
    object_texts = [object_texts[i] for i in object_rows]

    def unit(n, d=8):
        x = rng.normal(size=(n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    feats = {"image_types": unit(len(img_types)), "any_people": unit(2), "people": unit(len(counts)),
             "places": unit(len(place_texts)), "objects": unit(len(object_texts)), "images": unit(12)}

    def get_nn_text(raw_texts, text_feats, img_feats):
        scores = (text_feats @ img_feats.T).squeeze()
        return [raw_texts[i] for i in np.argsort(scores).squeeze()[::-1]]

    prompts = []
    for img_feats in feats["images"]:
        img_feats = img_feats[None, :]
        img_type = get_nn_text(img_types, feats["image_types"], img_feats)[0]
        ppl_result = get_nn_text(["no people", "people"], feats["any_people"], img_feats)[0]
        if ppl_result == "people":
            ppl_result = get_nn_text(counts, feats["people"], img_feats)[0]
        else:
            ppl_result = f"are {ppl_result}"
        sorted_places = get_nn_text(place_texts, feats["places"], img_feats)
        object_list = ", ".join(get_nn_text(object_texts, feats["objects"], img_feats)[:10])
        prompts.append(f"""I am an intelligent image captioning bot.
This image is a {img_type}. There {ppl_result}.
I think this photo was taken at a {sorted_places[0]}, {sorted_places[1]}, or {sorted_places[2]}.
I think there might be a {object_list} in this {img_type}.
A creative short caption I can generate to describe this image is:""")
    save_file(feats, out("socratic", "embeddings.safetensors"))
    write_json({"object_rows": object_rows, "prompts": prompts}, "socratic", "prompts.json")
    print(f"socratic: {len(prompts)} prompts as the published notebook builds them")


def official_vqa_evaluator():
    """The VQA v2 evaluator (vqa_eval.py) as salesforce-lavis ships it on PyPI, loaded from its
    wheel without installing the package (it imports only re and sys)."""
    import importlib.util
    import subprocess
    import zipfile
    folder = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "salesforce-lavis==1.0.2", "--no-deps", "-q", "-d", folder], check=True)
    wheel = zipfile.ZipFile(os.path.join(folder, "salesforce_lavis-1.0.2-py3-none-any.whl"))
    path = os.path.join(folder, "vqa_eval.py")
    with open(path, "wb") as f:
        f.write(wheel.read("lavis/common/vqa_tools/vqa_eval.py"))
    spec = importlib.util.spec_from_file_location("vqa_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VQAEval


def make_vqa_metric_goldens():
    """The official VQA evaluator's per-question accuracy (and normalised answers) on 200 cases
    whose answers vary in case, articles, number words, punctuation and contractions."""
    import contextlib
    import io
    VQAEval = official_vqa_evaluator()
    rng = random.Random(11)
    pools = [["2", "two", "Two", "2.", "two ", "3", "three"], ["yes", "Yes", "yes!", "no", "No."], ["a dog", "dog", "the dog", "dogs", "Dog"],
             ["red", "Red", "red-orange", "red orange", "orange"], ["dont know", "don't know", "dont", "unknown"],
             ["tennis", "tennis racket", "racket", "a tennis racket", "tennis-racket"], ["1,000", "1000", "one thousand", "1 000"],
             ["3.5", "3.50", "3,5", "three and a half"], ["left", "Left.", "on the left", "left side"], ["t-shirt", "t shirt", "tshirt", "shirt"],
             ["hes happy", "he's happy", "happy", "Happy!"], ["yes, it is", "yes it is", "yes", "(yes)"]]
    cases, qa_gt, qa_res = [], {}, {}
    for question_id in range(200):
        pool = rng.choice(pools)
        answers = [rng.choice(pool) for _ in range(10)]
        if question_id % 10 == 0:
            answers = [answers[0]] * 10                    # unanimous annotators: answers left unprocessed
        prediction = rng.choice(pool) if question_id % 7 else rng.choice(["\tyes\n", " Two ", "the  red", "not in the pool"])
        cases.append({"question_id": question_id, "answers": answers, "prediction": prediction})
        qa_gt[question_id] = {"question_id": question_id, "question_type": "what", "answer_type": "other",
                              "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
        qa_res[question_id] = {"question_id": question_id, "answer": prediction}

    class Annotations:
        def __init__(self, qa):
            self.qa = qa

        def getQuesIds(self):
            return list(self.qa)
    evaluator = VQAEval(Annotations(qa_gt), Annotations(qa_res), n=2)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    normaliser = VQAEval(Annotations({}), Annotations({}))
    for case in cases:
        case["accuracy"] = evaluator.evalQA[case["question_id"]]
        case["normalized_prediction"] = normaliser.processDigitArticle(normaliser.processPunctuation(case["prediction"].strip()))
    write_json({"cases": cases, "overall": evaluator.accuracy["overall"]}, "metrics", "vqa.json")
    print(f"vqa: {len(cases)} cases, overall accuracy {evaluator.accuracy['overall']}")


# ---------------------------------------------------------------- checkpoint forms

def make_tiny_bert():
    """A MiniLM-style sentence encoder (BERT, mean pooling, normalised) with random weights and the
    first 3,000 entries of MiniLM's vocabulary (special tokens, characters and common words)."""
    from transformers import BertConfig, BertModel
    with open(os.path.join(MINILM, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().splitlines()[:3000]
    torch.manual_seed(3)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, max_position_embeddings=128))
    save_tiny(model, "tiny-bert")
    with open(out("tiny-bert", "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(MINILM, "modules.json"), encoding="utf-8") as f:
        write_json(json.load(f), "tiny-bert", "modules.json")
    write_json({"max_seq_length": 128, "do_lower_case": False}, "tiny-bert", "sentence_bert_config.json")
    write_json({"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, "tiny-bert", "1_Pooling", "config.json")


CHECKPOINT_MODELS = {"tiny-gpt2": "GPT2LMHeadModel", "tiny-clip": "CLIPModel", "tiny-vit-gpt2": "VisionEncoderDecoderModel", "tiny-bert": "BertModel"}


def copy_model_files(source, target):
    """Everything of a fixture model folder but its weights and goldens."""
    import shutil
    for root, _, names in os.walk(out(source)):
        for name in names:
            if name.startswith("model.") or name.startswith("golden") or name == "tensor_sums.json":
                continue
            relative = os.path.relpath(os.path.join(root, name), out(source))
            os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
            shutil.copyfile(os.path.join(root, name), os.path.join(target, relative))


def save_legacy(state, path):
    """torch.save in the pre-1.6 format. Its storage keys are memory addresses and its storages follow in
    the keys' sorted order; keys are renumbered in order of first use (same length, so the pickles stay
    valid) and the storages laid out in that order, so reruns write identical files."""
    import io
    import pickle
    import pickletools
    import struct
    torch.save(state, path, _use_new_zipfile_serialization=False)
    data = open(path, "rb").read()
    stream = io.BytesIO(data)
    for _ in range(3):   # magic number, protocol version, system information
        for _ in pickletools.genops(stream):
            pass
    kinds = {}

    class Reader(pickle.Unpickler):
        def persistent_load(self, pid):
            kinds[pid[2]] = pid[1]

        def find_class(self, module, name):
            return getattr(torch, name) if name.endswith("Storage") else (lambda *args: None)
    Reader(stream).load()
    head_end = stream.tell()
    keys = pickle.load(stream)
    blocks, position = {}, stream.tell()
    for key in keys:
        count = struct.unpack("<q", data[position:position + 8])[0]
        size = 8 + count * {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                             "Byte": 1, "Bool": 1}[kinds[key].__name__[:-len("Storage")]]
        blocks[key], position = data[position:position + size], position + size
    assert position == len(data)

    def encoded(key):
        return b"X" + struct.pack("<I", len(key.encode())) + key.encode()
    order = sorted(keys, key=lambda k: data.index(encoded(k)))
    head = data[:head_end]
    for index, key in enumerate(order):
        head = head.replace(encoded(key), encoded(str(index).zfill(len(key))))
    tail = pickle.dumps([str(i).zfill(len(k)) for i, k in enumerate(order)], protocol=2) + b"".join(blocks[k] for k in order)
    with open(path, "wb") as f:
        f.write(head + tail)


def deterministic_zip(path, entries, compression):
    """A zip archive whose entries carry a fixed timestamp."""
    import zipfile
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=compression)


def make_checkpoint_forms():
    """Each tiny model as users download published checkpoints: pytorch_model.bin written by
    transformers' save_pretrained (torch's zip format), the same state dict in torch's legacy format,
    and two pytorch_model-0000N-of-00002.bin shards with their index. The GPT-2 forms also hold the
    uint8 causal-mask buffers older transformers saved (as cambridgeltl/magic_mscoco does)."""
    import shutil
    import transformers
    for name, architecture in CHECKPOINT_MODELS.items():
        model = getattr(transformers, architecture).from_pretrained(out(name), torch_dtype=torch.float16).eval()
        model.config._name_or_path = name   # not this machine's path
        root = out("checkpoints", name, "x")[:-2]
        shutil.rmtree(root, ignore_errors=True)
        for form in ["zip", "legacy", "sharded"]:
            copy_model_files(name, os.path.join(root, form))
        model.save_pretrained(os.path.join(root, "zip"), safe_serialization=False)
        state = torch.load(os.path.join(root, "zip", "pytorch_model.bin"), weights_only=True)
        if name == "tiny-gpt2":
            n = model.config.n_positions
            for layer in range(model.config.n_layer):
                state[f"transformer.h.{layer}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
                state[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.float16)
            torch.save(state, os.path.join(root, "zip", "pytorch_model.bin"))
        save_legacy(state, os.path.join(root, "legacy", "pytorch_model.bin"))
        # Two shards split by size, as save_pretrained(max_shard_size=...) names and indexes them.
        names = sorted(k for k in state if not k.endswith("lm_head.weight"))   # tied to the embeddings: shards leave it out
        sizes = [state[k].numel() * state[k].element_size() for k in names]
        total, running, split = sum(sizes), 0, len(names) - 1
        for i, size in enumerate(sizes):
            running += size
            if running >= total / 2:
                split = max(1, min(i, len(names) - 1))
                break
        weight_map = {}
        for index, part in enumerate([names[:split], names[split:]]):
            file = f"pytorch_model-{index + 1:05d}-of-00002.bin"
            # Each shard holds its own storages (a view would drag its whole storage along).
            torch.save({k: state[k].clone() for k in part}, os.path.join(root, "sharded", file))
            weight_map.update({k: file for k in part})
        with open(os.path.join(root, "sharded", "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        print(f"checkpoint forms of {name}: zip, legacy, 2 shards ({split} + {len(names) - split} tensors)")


def make_tiny_magic():
    """A repository shaped like cambridgeltl/magic_mscoco: a GPT-2 whose vocabulary has MAGiC's two added
    tokens (added_tokens.json, special_tokens_map.json, tokenizer_config.json) and whose only weights are a
    pytorch_model.bin with the old causal-mask buffers. Narrow (8 wide) to stay small; vocab.json and
    merges.txt are GPT-2's, committed in Tests/Fixtures/tokenizers."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(6)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50259, n_positions=64, n_embd=8, n_layer=1, n_head=2, initializer_range=0.5)).half()
    folder = out("checkpoints", "tiny-magic", "x")[:-2]
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=False)
    state = torch.load(os.path.join(folder, "pytorch_model.bin"), weights_only=True)
    state["transformer.h.0.attn.bias"] = torch.tril(torch.ones(64, 64, dtype=torch.uint8)).view(1, 1, 64, 64)
    state["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.float16)
    torch.save(state, os.path.join(folder, "pytorch_model.bin"))
    write_json({"<-start_of_text->": 50257, "<-pad->": 50258}, "checkpoints", "tiny-magic", "added_tokens.json")
    write_json({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<-pad->",
                "additional_special_tokens": ["<-start_of_text->"]}, "checkpoints", "tiny-magic", "special_tokens_map.json")
    write_json({"model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}, "checkpoints", "tiny-magic", "tokenizer_config.json")
    print("tiny-magic: GPT-2 with MAGiC's added tokens, pytorch_model.bin only")


class _Storage:
    """A storage of a hand-written checkpoint: its key, dtype class and claimed element count."""
    def __init__(self, key, count, kind=None):
        self.key, self.count, self.kind = key, count, kind


class _View:
    """A tensor of a hand-written checkpoint, pickled as torch pickles tensors."""
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        import collections
        return (torch._utils._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


def write_torch_zip(path, state, storages):
    """A checkpoint in torch's zip layout whose pickle and storages say exactly what they are told to."""
    import io
    import pickle
    import zipfile

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", obj.kind or torch.FloatStorage, obj.key, "cpu", obj.count)
            return None
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    deterministic_zip(path, [("archive/data.pkl", buffer.getvalue()), ("archive/byteorder", "little"), ("archive/version", "3\n")]
                      + [(f"archive/data/{key}", data) for key, data in storages.items()], zipfile.ZIP_STORED)


# The file a malicious pickle would create if anything ran it; the Swift tests check it never appears.
SIDE_EFFECT = "/tmp/stitch-pickle-side-effect"


def make_checkpoint_reader_fixtures():
    """Strided views, shared storages and every dtype in both torch formats (with their contiguous
    values as safetensors), and malicious or broken checkpoints that must be refused."""
    import zipfile
    from safetensors.torch import save_file as save_torch
    torch.manual_seed(4)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    half = torch.randn(3, 5).half()
    state = {
        "base": base, "transposed": base.t(), "block": base[1:3, 2:5], "every_other": base[:, ::2], "row": base[2],
        "half": half, "half_transposed": half.t(), "bfloat": torch.randn(4, 2).bfloat16(), "double": torch.randn(2, 3, dtype=torch.float64),
        "long": torch.arange(-3, 7), "int": torch.arange(6, dtype=torch.int32).reshape(2, 3), "short": torch.arange(4, dtype=torch.int16),
        "char": torch.arange(-2, 3, dtype=torch.int8), "byte": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
    }
    folder = out("checkpoints", "views", "x")[:-2]
    os.makedirs(folder, exist_ok=True)
    save_torch({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(folder, "expected.safetensors"))
    torch.save(state, os.path.join(folder, "zip.bin"))
    save_legacy(state, os.path.join(folder, "legacy.bin"))
    # The zip form re-packed with deflate, as a user's zip tool might.
    with zipfile.ZipFile(os.path.join(folder, "zip.bin")) as source:
        deterministic_zip(os.path.join(folder, "deflated.bin"), [(i.filename, source.read(i.filename)) for i in source.infolist()], zipfile.ZIP_DEFLATED)

    hostile = out("checkpoints", "hostile", "x")[:-2]
    os.makedirs(hostile, exist_ok=True)

    class SystemCall:
        def __reduce__(self):
            return (os.system, (f"touch {SIDE_EFFECT}",))

    class Evaluation:
        def __reduce__(self):
            return (eval, (f"__import__('os').system('touch {SIDE_EFFECT}')",))
    torch.save({"weight": SystemCall()}, os.path.join(hostile, "os_system.bin"))
    torch.save({"weight": Evaluation()}, os.path.join(hostile, "builtins_eval.bin"))
    save_legacy({"weight": Evaluation()}, os.path.join(hostile, "builtins_eval_legacy.bin"))
    torch.save({"weight": np.zeros(3, dtype=np.float32)}, os.path.join(hostile, "numpy_array.bin"))
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, os.path.join(hostile, "nested.bin"))
    four = np.arange(4, dtype=np.float32).tobytes()
    write_torch_zip(os.path.join(hostile, "short_storage.bin"), {"weight": _View(_Storage("0", 100), 0, (100,), (1,))}, {"0": four})
    write_torch_zip(os.path.join(hostile, "view_past_storage.bin"), {"weight": _View(_Storage("0", 4), 0, (3,), (2,))}, {"0": four})
    write_torch_zip(os.path.join(hostile, "huge_claim.bin"), {"weight": _View(_Storage("0", 25_000_000_000), 0, (25_000_000_000,), (1,))}, {"0": four})
    write_torch_zip(os.path.join(hostile, "overlapping_view.bin"), {"weight": _View(_Storage("0", 4), 0, (10 ** 12,), (0,))}, {"0": four})
    write_torch_zip(os.path.join(hostile, "empty_view_past_storage.bin"), {"weight": _View(_Storage("0", 4), 9, (0, 3), (3, 1))}, {"0": four})
    write_torch_zip(os.path.join(hostile, "missing_storage.bin"), {"weight": _View(_Storage("7", 4), 0, (4,), (1,))}, {"0": four})
    deterministic_zip(os.path.join(hostile, "not_a_checkpoint.bin"), [("notes/readme.txt", "just a zip file\n")], zipfile.ZIP_STORED)
    print(f"checkpoint reader fixtures: {len(state)} tensors in 3 encodings, {len(os.listdir(hostile))} hostile files")


def make_hub_cache():
    """A Hugging Face cache as huggingface_hub's snapshot_download fills it (refs/main, snapshots/<commit>
    linking into blobs/) for a repository holding the tiny captioner as pytorch_model.bin, fetched from a
    local imitation of the hub: the cache Python users already have, which Stitch must read without a request."""
    import hashlib
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from huggingface_hub import snapshot_download
    repo, commit = "stitch-fixtures/tiny-captioner", "f1c2" * 10
    source = out("checkpoints", "tiny-vit-gpt2", "zip")
    files = {name: open(os.path.join(source, name), "rb").read() for name in sorted(os.listdir(source))}
    # Only the vocabulary's first 1,000 ids: all the tiny decoder can emit.
    with open(os.path.join(TOKENIZERS, "gpt2-vocab.json"), encoding="utf-8") as f:
        files["vocab.json"] = json.dumps({k: v for k, v in json.load(f).items() if v < 1000}, ensure_ascii=False).encode()
    files["merges.txt"] = b"#version: 0.2\n"

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, body):
            path = self.path.split("?")[0]
            if path.startswith(f"/api/models/{repo}/revision/"):
                data = json.dumps({"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in files]}).encode()
                headers = {"Content-Type": "application/json"}
            elif path.startswith(f"/{repo}/resolve/"):
                name = path.split("/resolve/", 1)[1].split("/", 1)[1]
                data = files[name]
                headers = {"X-Repo-Commit": commit, "ETag": '"' + hashlib.sha256(data).hexdigest() + '"'}
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self):
            self.answer(False)

        def do_GET(self):
            self.answer(True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = out("hub-cache", "x")[:-2]
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        snapshot_download(repo, cache_dir=cache, endpoint=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    shutil.rmtree(os.path.join(cache, ".locks"), ignore_errors=True)
    print(f"hub cache: {repo} at {commit[:8]} with {len(files)} files")


# ---------------------------------------------------------------- SentencePiece

def sentencepiece_training_text():
    """Captions, prompts, sentences and the tokenizer corpus: enough text for small vocabularies."""
    with open(out("metrics", "captions.json"), encoding="utf-8") as f:
        groups = json.load(f)["groups"]
    lines = [g["candidate"] for g in groups] + [r for g in groups for r in g["references"]]
    for name in sorted(os.listdir(os.path.join(ROOT, "Prompts"))):
        with open(os.path.join(ROOT, "Prompts", name), encoding="utf-8") as f:
            lines += [line for line in f.read().splitlines() if line.strip()]
    lines += SENTENCES + [t for t in tokenizer_corpus() if t.strip()]
    return [line.replace("\n", " ") for line in lines]


def sentencepiece_test_strings(training):
    """At least 1,000 strings: the tokenizer corpus, training lines changed in case and punctuation, whitespace
    runs, code, numbers, emoji and CJK, special-token look-alikes and random code points."""
    rng = random.Random(20261202)
    strings = list(tokenizer_corpus())
    extras = ["</s>", "<unk>", "<s>", "<pad>", "▁", "▁▁x", "a▁b", "  double  spaces  ", "\u3000全角\u3000", "tab\there",
              "def f(x):\n    return x**2  # square", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "SELECT * FROM t WHERE id=42;",
              "x = [1, 2, 3]\nprint(x[-1])", "3.14159265358979", "1,234,567.89", "0xDEADBEEF", "+1-555-0100", "2026-12-02T00:11:45Z",
              "😀😃😄😁", "👨‍👩‍👧", "🇯🇵🇰🇷", "東京タワーは高い", "我爱北京天安门", "한국어를 배워요", "ÀÉÎÕÜ àéîõü", "ＡＢＣ１２３", "ﬁﬂ", "Ⅻ ⅻ ½",
              "hello</s>world", "<unk> Hey", "Hey <unk>", " leading", "trailing ", "", " ", "\n\n", "a" * 200, "word " * 40]
    strings += extras
    while len(strings) < 1100:
        kind = rng.random()
        if kind < 0.45:
            line = rng.choice(training)
            line = line.upper() if rng.random() < 0.2 else line.title() if rng.random() < 0.2 else line
            if rng.random() < 0.3:
                line = line.replace(" ", rng.choice(["  ", " \t ", "   ", "\u00a0"]))
            strings.append(line + rng.choice(["", ".", "!", "?", "...", " :)", ";", " 42"]))
        elif kind < 0.75:
            strings.append(" ".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8))))
        else:
            strings.append("".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x24F), rng.randint(0x3040, 0x30FF),
                                                   rng.randint(0x4E00, 0x9FFF), rng.randint(0xAC00, 0xD7A3), rng.randint(0x1F300, 0x1F6FF),
                                                   0x20, 0x20, 0x2581, 0x3000]))
                                   for _ in range(rng.randint(1, 20))))
    return strings


def make_sentencepiece_goldens():
    """Three SentencePiece models trained with the sentencepiece library on sentencepiece_training_text():
    a SigLIP-style unigram (nmt_nfkc, T5's <pad>/</s>/<unk>), a Llama-2-style BPE (byte fallback, identity
    normalization, no whitespace folding, split digits) and a unigram with user-defined symbols and byte
    fallback. Goldens: sentencepiece's ids and decoded text for every test string, SiglipTokenizer's ids
    (and padded to 64), and LlamaTokenizer's ids in its legacy and non-legacy behaviour."""
    import io
    import sentencepiece as spm
    from transformers import LlamaTokenizer, SiglipTokenizer
    training = sentencepiece_training_text()
    folder = out("sentencepiece", "x")[:-2]
    os.makedirs(folder, exist_ok=True)
    settings = {
        "siglip": dict(model_type="unigram", vocab_size=1200, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False),
        "llama": dict(model_type="bpe", vocab_size=700, character_coverage=0.99, byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
                      remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
                      hard_vocab_limit=False),
        "symbols": dict(model_type="unigram", vocab_size=700, character_coverage=0.99, byte_fallback=True, user_defined_symbols=["<sep>", "[MASK]", "```", "ab"],
                        control_symbols=["<ctrl>"], hard_vocab_limit=False),
    }
    strings = sentencepiece_test_strings(training)
    golden = {"strings": strings}
    for name, options in settings.items():
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(training), model_writer=model,
                                       num_threads=1, seed_sentencepiece_size=100000, shuffle_input_sentence=False, minloglevel=2, **options)
        path = os.path.join(folder, f"{name}.model")
        with open(path, "wb") as f:
            f.write(model.getvalue())
        processor = spm.SentencePieceProcessor(model_file=path)
        ids = [processor.encode(text) for text in strings]
        golden[name] = {"ids": ids, "decoded": [processor.decode(i) for i in ids], "pieces": processor.get_piece_size()}
    siglip = SiglipTokenizer(os.path.join(folder, "siglip.model"))
    golden["siglip_tokenizer"] = {"ids": [siglip(text)["input_ids"] for text in strings],
                                  "padded": [siglip(text, padding="max_length", max_length=64, truncation=True)["input_ids"] for text in strings[:200]]}
    for legacy in [True, False]:
        llama = LlamaTokenizer(os.path.join(folder, "llama.model"), legacy=legacy)
        golden[f"llama_tokenizer_legacy_{str(legacy).lower()}"] = {"ids": [llama(text)["input_ids"] for text in strings]}
    write_json(golden, "sentencepiece", "golden.json")
    print(f"sentencepiece: {len(strings)} strings, models " + ", ".join(f"{n} ({golden[n]['pieces']} pieces)" for n in settings))



OWLVIT_QUERIES = ["a photo of a cat", "a coffee cup", "a dog next to a bicycle", "a red truck", "an astronaut"]


def make_owlvit_goldens():
    """A tiny random OwlViTForObjectDetection (96x96 pixels, 16-pixel patches: a 6x6 grid of boxes) with its
    processor's pixels, the raw logits, boxes and embeddings for five text queries on the test photos, and
    post_process_object_detection's detections; the processor's 768x768 pixels of the published config (as CRC-32s of
    their float32 bytes); and the state-dict names and shapes of the published google/owlvit-base-patch32 architecture."""
    import zlib
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor
    torch.manual_seed(5)
    config = OwlViTConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=96,
                           patch_size=16),
        projection_dim=32)
    config.architectures = ["OwlViTForObjectDetection"]
    model = OwlViTForObjectDetection(config).eval()
    with torch.no_grad():   # peaked scores: a wider logit scale spreads the sigmoids
        model.class_head.logit_scale.bias.fill_(3.0)
    save_tiny(model, "tiny-owlvit")
    model = OwlViTForObjectDetection.from_pretrained(out("tiny-owlvit"), torch_dtype=torch.float32).eval()
    processor = OwlViTImageProcessor(size={"height": 96, "width": 96}, crop_size={"height": 96, "width": 96}, do_center_crop=True)
    processor.save_pretrained(out("tiny-owlvit"))
    tokenizer = clip_tokenizer()
    text = tokenizer(OWLVIT_QUERIES, padding="max_length", max_length=16, return_tensors="pt")
    golden, detections = {}, {}
    threshold = 0.9
    for name in ["chelsea.png", "coffee.png", "astronaut.png"]:
        image = Image.open(os.path.join(IMAGES, name)).convert("RGB")
        pixels = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            outputs = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
        results = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=[(image.height, image.width)])[0]
        golden[name + ".pixels"] = pixels[0]
        golden[name + ".logits"] = outputs.logits[0]
        golden[name + ".boxes"] = outputs.pred_boxes[0]
        golden[name + ".image_embeds"] = outputs.image_embeds[0].reshape(-1, outputs.image_embeds.shape[-1])
        golden["text_embeds"] = outputs.text_embeds[0]
        detections[name] = [{"label": int(l), "score": float(s), "box": [float(x) for x in b]}
                            for s, l, b in zip(results["scores"], results["labels"], results["boxes"])]
        print(f"owlvit {name}: {len(detections[name])} detections over {threshold}")
    save_file({k: v.contiguous().numpy() for k, v in golden.items()}, out("tiny-owlvit", "golden.safetensors"))
    published = OwlViTImageProcessor(size={"height": 768, "width": 768}, crop_size={"height": 768, "width": 768}, do_center_crop=True)
    crcs = {name: zlib.crc32(published(images=Image.open(os.path.join(IMAGES, name)).convert("RGB"), return_tensors="np")["pixel_values"][0]
                             .astype("<f4").tobytes()) for name in sorted(os.listdir(IMAGES)) if not name.endswith(".md")}
    write_json({"queries": OWLVIT_QUERIES, "input_ids": [[i for i, m in zip(ids, mask) if m] for ids, mask in
                                                          zip(text["input_ids"].tolist(), text["attention_mask"].tolist())],
                "threshold": threshold, "detections": detections, "published_pixels_crc32": crcs}, "tiny-owlvit", "golden.json")
    published_config = OwlViTConfig()   # transformers' defaults are google/owlvit-base-patch32's
    published_config.architectures = ["OwlViTForObjectDetection"]
    with torch.device("meta"):
        real = OwlViTForObjectDetection(published_config)
    published_config.to_json_file(out("owlvit-configs", "owlvit-base-patch32", "config.json"))
    write_json({k: list(p.shape) for k, p in real.state_dict().items()}, "owlvit-configs", "owlvit-base-patch32", "manifest.json")

# ---------------------------------------------------------------- SigLIP

SIGLIP_TEXTS = ["a photo of a cat", "A coffee cup.", "a dog next to a bicycle and a truck", "an astronaut, in space!", "two  cats",
                " ".join(["a very long caption about a red truck"] * 12)]


def make_siglip_goldens():
    """A tiny random SiglipModel (64-pixel images, 16-pixel patches, 32 wide as the towers must be alike; the committed siglip.model as its tokenizer) with a
    peaked logit scale and a bias: SiglipImageProcessor's pixels, features, logits and sigmoid probabilities on the test
    photos, texts padded to max_length as the model card says; the published processor's 224 x 224 pixels as CRC-32s;
    google/siglip-base-patch16-224's state-dict names and shapes; and MAGiC (the published algorithm, today's text path)
    with tiny-gpt2 and this SigLIP as the scorer."""
    import zlib
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer
    torch.manual_seed(7)
    config = SiglipConfig(
        text_config=dict(vocab_size=1200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16))
    config.architectures = ["SiglipModel"]
    model = SiglipModel(config).eval()
    with torch.no_grad():   # peaked: random towers give small cosines, a wide scale spreads them
        model.logit_scale.fill_(3.5)
        model.logit_bias.fill_(-2.0)
    save_tiny(model, "tiny-siglip")
    model = SiglipModel.from_pretrained(out("tiny-siglip"), torch_dtype=torch.float32).eval()
    tokenizer = SiglipTokenizer(os.path.join(HERE, "sentencepiece", "siglip.model"), model_max_length=64)
    tokenizer.save_pretrained(out("tiny-siglip"))
    os.remove(out("tiny-siglip", "spiece.model"))   # the committed sentencepiece/siglip.model; the tests link it in
    processor = SiglipImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(out("tiny-siglip"))
    text = tokenizer(SIGLIP_TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    names = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
    pixels = processor(images=[Image.open(os.path.join(IMAGES, n)).convert("RGB") for n in names], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(input_ids=text["input_ids"], pixel_values=pixels)
        golden = {"pixels": pixels, "image_features": model.get_image_features(pixel_values=pixels),
                  "text_features": model.get_text_features(input_ids=text["input_ids"]),
                  "logits_per_image": outputs.logits_per_image, "probabilities": torch.sigmoid(outputs.logits_per_image),
                  "vision_hidden": outputs.vision_model_output.last_hidden_state}
    save_file({k: v.contiguous().numpy() for k, v in golden.items()}, out("tiny-siglip", "golden.safetensors"))
    print("siglip probabilities", golden["probabilities"].numpy().round(3).tolist())
    published = SiglipImageProcessor()
    crcs = {name: zlib.crc32(published(images=Image.open(os.path.join(IMAGES, name)).convert("RGB"), return_tensors="np")["pixel_values"][0]
                             .astype("<f4").tobytes()) for name in sorted(os.listdir(IMAGES)) if not name.endswith(".md")}

    lm_tokenizer = GPT2TokenizerFast(os.path.join(TOKENIZERS, "gpt2-vocab.json"), os.path.join(TOKENIZERS, "gpt2-merges.txt"))
    lm = GPT2LMHeadModel.from_pretrained(out("tiny-gpt2"), torch_dtype=torch.float32).eval()
    magic = {"images": names[:3], "settings": []}

    for settings in MAGIC_SETTINGS[:2]:
        outputs = []
        for index in range(3):
            image = golden["image_features"][index:index + 1]

            def text_logits(texts):
                ids = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")["input_ids"]
                return model(input_ids=ids, pixel_values=pixels[index:index + 1]).logits_per_image[0]

            outputs.append(magic_reference.magic_search(lm, lm_tokenizer, None, None, image, [50256], text_logits=text_logits, **settings))
        blind = magic_reference.magic_search(lm, lm_tokenizer, None, None, golden["image_features"][:1], [50256], **dict(settings, beta=0.0))
        assert len({tuple(o) for o in outputs}) > 1 and outputs[0] != blind, settings   # the scorer steers the captions
        magic["settings"].append(dict(settings, outputs=outputs))
    write_json({"texts": SIGLIP_TEXTS, "input_ids": text["input_ids"].tolist(), "images": names, "published_pixels_crc32": crcs, "magic": magic},
               "tiny-siglip", "golden.json")
    published_config = SiglipConfig()   # transformers' defaults are google/siglip-base-patch16-224's
    published_config.architectures = ["SiglipModel"]
    with torch.device("meta"):
        real = SiglipModel(published_config)
    published_config.to_json_file(out("siglip-configs", "siglip-base-patch16-224", "config.json"))
    write_json({k: list(p.shape) for k, p in real.state_dict().items()}, "siglip-configs", "siglip-base-patch16-224", "manifest.json")


# ---------------------------------------------------------------- BLIP

BLIP_TEXTS = ["a photo of a cat", "a coffee cup on a table", "an astronaut", "two dogs running in the park", "a red truck."]
BLIP_PROMPT = "a picture of"


def blip_config():
    """Tiny BLIP sizes on the committed 4,000-token vocabulary ([DEC] and [ENC] added after it); weights of std 0.2 so
    that the image steers the text."""
    from transformers import BlipConfig
    return BlipConfig(
        text_config=dict(vocab_size=4002, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=64, bos_token_id=4000, sep_token_id=102, pad_token_id=0, initializer_range=0.2),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16,
                           initializer_range=0.2),
        image_text_hidden_size=24)


def blip_tokenizer(folder):
    """BERT's uncased WordPiece on the first 4,000 entries of MiniLM's vocab.txt with BLIP's added [DEC] (bos) and [ENC]."""
    from transformers import BertTokenizerFast
    with open(os.path.join(MINILM, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().splitlines()[:4000]
    with open(out(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(out(folder, "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [4000, 4001]
    tokenizer.save_pretrained(out(folder))
    os.remove(out(folder, "tokenizer.json"))   # vocab.txt holds the vocabulary once
    return tokenizer


def make_blip_goldens():
    """Tiny random BlipForConditionalGeneration and BlipForImageTextRetrieval with BlipImageProcessor (64 pixels) on
    three photos: pixels, the image's last hidden states, teacher-forced decoder logits, generate() captions (greedy,
    beam 3, contrastive; without and with the prompt "a picture of") and their decoded text; ITM scores and ITC
    similarities of five texts; the decoded text of random id lists; the published processor's 384 x 384 pixels as
    CRC-32s; and the state-dict names and shapes of the published base configs."""
    import zlib
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipImageProcessor
    torch.manual_seed(8)
    config = blip_config()
    config.architectures = ["BlipForConditionalGeneration"]
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():   # peaked next-token distributions, and [SEP] likely enough that some captions end early
        model.text_decoder.cls.predictions.transform.LayerNorm.weight.mul_(8.0)
        model.text_decoder.cls.predictions.bias[102] += 3.0
    save_tiny(model, "tiny-blip")
    model = BlipForConditionalGeneration.from_pretrained(out("tiny-blip"), torch_dtype=torch.float32).eval()
    tokenizer = blip_tokenizer("tiny-blip")
    processor = BlipImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(out("tiny-blip"))
    names = ["chelsea.png", "coffee.png", "astronaut.png"]
    tensors = {}
    golden = {"images": names, "prompt": BLIP_PROMPT, "prompt_ids": tokenizer(BLIP_PROMPT)["input_ids"], "captions": {}}
    settings = {"greedy": dict(do_sample=False, max_new_tokens=16), "beam": dict(do_sample=False, num_beams=3, max_new_tokens=16),
                "contrastive": dict(penalty_alpha=0.6, top_k=4, max_new_tokens=12)}
    for name in names:
        pixels = processor(images=Image.open(os.path.join(IMAGES, name)).convert("RGB"), return_tensors="pt")["pixel_values"]
        tensors[name + ".pixels"] = pixels[0]
        with torch.no_grad():
            states = model.vision_model(pixel_values=pixels).last_hidden_state
            tensors[name + ".image_states"] = states[0]
            forced = torch.tensor([[4000] + tokenizer(BLIP_PROMPT + " the sea")["input_ids"][1:-1]])
            tensors[name + ".logits"] = model.text_decoder(input_ids=forced, encoder_hidden_states=states).logits[0]
            captions = {}
            for strategy, options in settings.items():
                for prompted in [False, True]:
                    ids = tokenizer(BLIP_PROMPT, return_tensors="pt")["input_ids"] if prompted else None
                    output = model.generate(pixel_values=pixels, input_ids=ids, **options)[0].tolist()
                    captions[strategy + (" prompted" if prompted else "")] = {"ids": output, "text": tokenizer.decode(output, skip_special_tokens=True)}
        golden["captions"][name] = captions
        print("blip", name, {k: v["text"] for k, v in captions.items()})
    for key in golden["captions"][names[0]]:   # the image steers every caption
        assert len({golden["captions"][n][key]["text"] for n in names}) > 1, key
    ended = [102 in c["ids"] for n in names for c in golden["captions"][n].values()]
    assert any(ended) and not all(ended), "captions ending at [SEP] and captions running to the token limit"
    generator = torch.Generator().manual_seed(9)
    golden["decode"] = []
    for length in [1, 2, 5, 9, 16]:
        for _ in range(6):
            ids = torch.randint(0, 4002, (length,), generator=generator).tolist()
            golden["decode"].append({"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True)})
    for text in BLIP_TEXTS + ["it's a cat's toy, isn't it?", "don ' t", "##ing photo"]:
        ids = tokenizer(text)["input_ids"]
        golden["decode"].append({"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True)})

    torch.manual_seed(10)
    config = blip_config()
    config.architectures = ["BlipForImageTextRetrieval"]
    retrieval = BlipForImageTextRetrieval(config).eval()
    with torch.no_grad():   # match probabilities spread over (0, 1), not all near 0.5
        retrieval.itm_head.weight.mul_(20.0)
    save_tiny(retrieval, "tiny-blip-itm")
    retrieval = BlipForImageTextRetrieval.from_pretrained(out("tiny-blip-itm"), torch_dtype=torch.float32).eval()
    blip_tokenizer("tiny-blip-itm")
    processor.save_pretrained(out("tiny-blip-itm"))
    text = tokenizer(BLIP_TEXTS, padding=True, return_tensors="pt")
    itm_tensors = {}
    for name in names:
        pixels = processor(images=Image.open(os.path.join(IMAGES, name)).convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            itm = retrieval(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels.repeat(len(BLIP_TEXTS), 1, 1, 1)).itm_score
            itc = retrieval(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels, use_itm_head=False).itm_score
        itm_tensors[name + ".itm"] = itm
        itm_tensors[name + ".itm_probabilities"] = itm.softmax(dim=1)[:, 1]
        itm_tensors[name + ".itc"] = itc[0]
    save_file({k: v.contiguous().numpy() for k, v in itm_tensors.items()}, out("tiny-blip-itm", "golden.safetensors"))
    write_json({"texts": BLIP_TEXTS, "images": names, "input_ids": [[i for i, m in zip(ids, mask) if m] for ids, mask in
                                                                   zip(text["input_ids"].tolist(), text["attention_mask"].tolist())]},
               "tiny-blip-itm", "golden.json")

    published = BlipImageProcessor(size={"height": 384, "width": 384})
    golden["published_pixels_crc32"] = {
        name: zlib.crc32(published(images=Image.open(os.path.join(IMAGES, name)).convert("RGB"), return_tensors="np")["pixel_values"][0]
                         .astype("<f4").tobytes()) for name in sorted(os.listdir(IMAGES)) if not name.endswith(".md")}
    save_file({k: v.contiguous().numpy() for k, v in tensors.items()}, out("tiny-blip", "golden.safetensors"))
    write_json(golden, "tiny-blip", "golden.json")
    from transformers import BlipConfig
    for folder, model_class in [("blip-image-captioning-base", BlipForConditionalGeneration), ("blip-itm-base", BlipForImageTextRetrieval)]:
        published_config = BlipConfig()   # transformers' defaults are the base models' (ViT-B/16 at 384 pixels, BERT-base)
        published_config.architectures = [model_class.__name__]
        with torch.device("meta"):
            real = model_class(published_config)
        published_config.to_json_file(out("blip-configs", folder, "config.json"))
        write_json({k: list(p.shape) for k, p in real.state_dict().items()}, "blip-configs", folder, "manifest.json")


# ---------------------------------------------------------------- Llama-family decoders

LLAMA_VARIANTS = {
    # Llama 3: grouped-query attention and llama3 rope scaling (original context 16, so it changes frequencies here).
    "tiny-llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=700, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, initializer_range=0.2, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16))),
    # Qwen2: q/k/v biases, tied embeddings, one key-value head; dynamic rope scaling past 12 positions, which the long
    # prompt exceeds and the short one's generations grow past.
    "tiny-qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=700, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        max_position_embeddings=12, initializer_range=0.2, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        rope_scaling=dict(rope_type="dynamic", factor=4.0))),
    # Mistral: a sliding window of 8 positions, shorter than the prompts.
    "tiny-mistral": ("MistralConfig", "MistralForCausalLM", dict(
        vocab_size=700, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, initializer_range=0.2, rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=8, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2)),
    # SmolLM: the Llama architecture with tied embeddings and plain multi-head attention; linear rope scaling.
    "tiny-smollm": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=700, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, initializer_range=0.2, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        rope_scaling=dict(rope_type="linear", factor=2.0))),
}


# Random weights of std 0.2 and the final norm scaled by 4: every variant's greedy text varies and its top two logits
# differ by more than 0.01 everywhere, so no tie can hide a difference.
NORM_SCALE = 4.0


def make_llama_goldens():
    """Tiny random models of each Llama-family variant (F16 weights, the final norm scaled so that next-token
    distributions are peaked), with transformers' logits and its generate() outputs: greedy, beam and contrastive."""
    import transformers
    for index, (folder, (config_class, model_class, settings)) in enumerate(LLAMA_VARIANTS.items()):
        torch.manual_seed(20 + index)
        config = getattr(transformers, config_class)(**settings)
        model = getattr(transformers, model_class)(config)
        with torch.no_grad():
            model.model.norm.weight.mul_(NORM_SCALE)
        save_tiny(model, folder)
        model = getattr(transformers, model_class).from_pretrained(out(folder), torch_dtype=torch.float32, attn_implementation="eager").eval()
        generator = torch.Generator().manual_seed(30 + index)
        prompts = [[1] + torch.randint(3, 700, (n,), generator=generator).tolist() for n in (5, 19)]
        tensors, golden = {}, {"prompts": prompts, "greedy": [], "beam": [], "contrastive": []}

        def fresh_rotary():
            # Dynamic scaling keeps the longest length seen in the module; each call here starts as a fresh model would.
            for module in model.modules():
                if hasattr(module, "original_inv_freq"):
                    module.register_buffer("inv_freq", module.original_inv_freq, persistent=False)
                    module.max_seq_len_cached = module.original_max_seq_len

        def generate(prompt, **options):
            ids = torch.tensor([prompt])
            fresh_rotary()
            with torch.no_grad():
                return model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=2, **options)[0, len(prompt):].tolist()

        for i, prompt in enumerate(prompts):
            fresh_rotary()
            with torch.no_grad():
                tensors[f"p{i}.logits"] = model(torch.tensor([prompt])).logits[0]
            golden["greedy"].append(generate(prompt, do_sample=False, max_new_tokens=24))
            golden["beam"].append(generate(prompt, do_sample=False, num_beams=3, max_new_tokens=12))
            golden["contrastive"].append(generate(prompt, penalty_alpha=0.6, top_k=4, max_new_tokens=12))
        if folder == "tiny-llama3":
            # Text through a real SentencePiece Llama tokenizer (the fixture model of make_sentencepiece_goldens, 700 pieces).
            from transformers import LlamaTokenizer
            import shutil
            shutil.copyfile(out("sentencepiece", "llama.model"), out(folder, "tokenizer.model"))
            tokenizer = LlamaTokenizer(out(folder, "tokenizer.model"), legacy=True)
            tokenizer.save_pretrained(out(folder))
            os.remove(out(folder, "special_tokens_map.json"))
            ids = tokenizer("a photo of the city")["input_ids"]
            continuation = generate(ids, do_sample=False, max_new_tokens=10)
            golden["text"] = {"prompt": "a photo of the city", "ids": ids, "greedy": continuation,
                              "greedy_text": tokenizer.decode(continuation, skip_special_tokens=True)}
        save_file({k: v.contiguous().numpy() for k, v in tensors.items()}, out(folder, "golden.safetensors"))
        write_json(golden, folder, "golden.json")
    print("Llama family: " + ", ".join(LLAMA_VARIANTS))


def make_pica_local_golden():
    """PICa's answer selection (microsoft/PICa gpt3_api_okvqa.py, written here from its logic) with a local model in
    place of GPT-3: each prompt completed greedily (5 tokens at most, temperature 0), the log-probabilities of the
    tokens before the first newline summed, the text before it cleaned by process_answer, and the answer with the
    highest sum kept (the first on ties). The model is the tiny Llama 3 fixture with its SentencePiece tokenizer."""
    from transformers import LlamaForCausalLM, LlamaTokenizer
    model = LlamaForCausalLM.from_pretrained(out("tiny-llama3"), torch_dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = LlamaTokenizer(out("tiny-llama3", "tokenizer.model"), legacy=True)

    def process_answer(answer):
        answer = answer.replace(".", "").replace(",", "").lower()
        return " ".join(item for item in answer.split(" ") if item not in {"a", "an", "the", "to", ""})

    header = "Please answer the question according to the above context.\n===\n"
    examples = [("a man riding a wave on top of a surfboard", "What is he standing on?", "surfboard"),
                ("a dog sitting next to a red bus", "What color is the bus?", "red"),
                ("two plates of food on a table", "What meal is this?", "lunch")]
    test = ("a cat lying on a laptop keyboard", "What is the cat on?")
    prompts = []
    for shots in [(0,), (1,), (2,), (0, 2), (1, 0)]:
        prompt = header
        for i in shots:
            prompt += "Context: %s\n===\n" % examples[i][0]
            prompt += "Q: %s\nA: %s\n\n===\n" % examples[i][1:]
        prompts.append(prompt + "Context: %s\n===\nQ: %s\nA:" % test)
    candidates = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            result = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, output_scores=True,
                                    return_dict_in_generate=True, pad_token_id=0, eos_token_id=2)
        tokens = result.sequences[0, ids.shape[1]:].tolist()
        logprobs = [torch.log_softmax(score[0].float(), -1)[token].item() for score, token in zip(result.scores, tokens)]
        kept = []
        for token in tokens:   # the completion stops at a newline (the API's stop) or the end token
            if token == 2 or "\n" in tokenizer.decode([token]):
                break
            kept.append(token)
        text = tokenizer.decode(kept)
        candidates.append({"tokens": kept, "text": text, "answer": process_answer(text), "logprob": sum(logprobs[:len(kept)])})
    best = max(range(len(candidates)), key=lambda i: (candidates[i]["logprob"], -i))
    write_json({"prompts": prompts, "candidates": candidates, "answer": candidates[best]["answer"]}, "pica", "local_llama.json")
    print("pica: answer selection with the tiny Llama: " + ", ".join(f"{c['answer']!r} {c['logprob']:.3f}" for c in candidates))


def make_label_golden():
    """Boxes and their labels drawn by Pillow with X11's public-domain 6x13 font (xfonts-base: the font
    Sources/StitchImaging/BitmapFont.swift was made from), laid out as `RGBImage.drawLabel` lays them out:
    above the box where there is room, else inside; moved left to fit; one scaled pixel of padding; black text on
    light colours, white on dark; non-ASCII drawn as '?'."""
    from PIL import ImageDraw, ImageFont, PcfFontFile
    folder = tempfile.mkdtemp()
    pcf = PcfFontFile.PcfFontFile(io.BytesIO(gzip.open("/usr/share/fonts/X11/misc/6x13-ISO8859-1.pcf.gz").read()))
    pcf.save(os.path.join(folder, "6x13"))
    font = ImageFont.load(os.path.join(folder, "6x13.pil"))
    spec = {"width": 160, "height": 100, "background": [128, 128, 128], "draws": [
        {"box": [20, 5, 100, 60], "color": [255, 0, 0], "thickness": 2, "text": "dog 0.87 \u00e9", "scale": 1},
        {"box": [10, 50, 60, 95], "color": [0, 255, 0], "thickness": 1, "text": "bus 0.5", "scale": 2},
        {"box": [130, 80, 158, 98], "color": [0, 0, 255], "thickness": 3, "text": "traffic light 0.42", "scale": 1},
    ]}
    W, H = spec["width"], spec["height"]
    image = Image.new("RGB", (W, H), tuple(spec["background"]))
    draw = ImageDraw.Draw(image)
    for d in spec["draws"]:
        draw.rectangle(d["box"], outline=tuple(d["color"]), width=d["thickness"])
    for d in spec["draws"]:
        text = "".join(c if 32 <= ord(c) <= 126 else "?" for c in d["text"])
        s, color = d["scale"], tuple(d["color"])
        lw, lh = len(text) * 6 * s + 2 * s, 13 * s
        left, top = d["box"][0], d["box"][1]
        x0 = max(0, min(left, W - lw))
        y0 = max(0, top - lh if top - lh >= 0 else min(top, H - lh))
        draw.rectangle([x0, y0, x0 + lw - 1, y0 + lh - 1], fill=color)
        mask = Image.new("1", (len(text) * 6, 13), 0)
        ImageDraw.Draw(mask).text((0, 0), text, font=font, fill=1)
        mask = mask.resize((mask.width * s, mask.height * s), Image.NEAREST)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
        image.paste(ink, (x0 + s, y0), mask)
    os.makedirs(out("labels"), exist_ok=True)
    image.save(out("labels", "golden.png"))
    write_json(spec, "labels", "spec.json")
    print("labels: golden.png")


CHAT_CONSTRUCT_TEMPLATES = {
    # Whitespace: '-' on either side, trim_blocks and lstrip_blocks, '{%+', comments on their own lines.
    "whitespace": "{# a comment #}\n  {% for m in messages %}\n    <{{ m.role }}>\n  {%- if m.content %}  {{ m.content -}}  {% endif %}\n    {%+ if loop.last %}[last]{% endif %}\n  {#- trimmed comment -#}\n  {% endfor %}\n{{- '  end  ' -}}\n\n  tail {{ add_generation_prompt }}\n",
    # Loops: loop variables, a filter, else, break and continue, unpacking, iterating dicts and strings.
    "loops": "{% for m in messages if m.role != 'system' %}{{ loop.index }}/{{ loop.length }}:{{ loop.index0 }},{{ loop.revindex }},{{ loop.revindex0 }},"
             "{{ loop.first }},{{ loop.last }},{{ loop.previtem.role if loop.previtem is defined else '-' }},{{ (loop.nextitem or {}).role }};{% endfor %}"
             "|{% for x in [] %}x{% else %}empty{% endfor %}|{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}"
             "|{% for k, v in {'b': 1, 'a': [2, 3]}.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in {'z': 1, 'y': 2} %}{{ k }}{% endfor %}|{% for c in 'abc' %}{{ c }}-{% endfor %}"
             "|{% for i in range(1, 10, 3) %}{{ i }}{% endfor %}{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}",
    # Scopes: a set inside a loop stays inside it; a namespace carries values out.
    "scopes": "{% set outer = 'o' %}{% set ns = namespace(count=0, last='') %}{% for m in messages %}{% set outer = m.role %}{% set ns.count = ns.count + 1 %}"
              "{% set ns.last = m.role %}{% endfor %}{{ outer }} {{ ns.count }} {{ ns.last }}{% set block %}[{{ messages | length }}]{% endset %} {{ block }}"
              "{% if true %}{% set inner = 'i' %}{% endif %} {{ inner }}",
    # Expressions: Python's arithmetic, comparisons, membership, concatenation, conditionals and reprs.
    "expressions": "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ 1.5 + 1 }} {{ 10 / 5 }}"
                   " {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ 'ab' in 'cabd' }} {{ 'x' not in ['x', 'y'] }} {{ 'k' in {'k': 1} }}"
                   " {{ 'a' ~ 1 ~ none ~ true }} {{ 'yes' if messages | length > 1 else 'no' }} [{{ 'only' if false }}] {{ [1, 'a', none, true, 1.5, {'k': \"it's\"}] }}"
                   " {{ {'a': 1, 'b': [1, 2]} }} {{ 'abcdef'[1:4] }} {{ 'abcdef'[::-1] }} {{ 'abcdef'[-2:] }} {{ [1, 2, 3, 4][::2] }} {{ messages[-1].role }}"
                   " {{ not messages }} {{ none is none }} {{ 0.1 + 0.2 }} {{ 1e3 if false else 2.50 }} {{ 'a' + 'b' * 3 }} {{ [1] + [2] }} {{ messages[0]['role'] == 'system' and 'S' or 'N' }}",
    # Filters transformers' templates use, tojson with its options.
    "filters": "{% for m in messages %}{{ m.content | trim | upper }}|{{ m.content | lower | title }}|{{ m.content | length }}|{{ m.role | capitalize }};{% endfor %}"
               "{{ messages | map(attribute='role') | join(', ') }}|{{ messages | selectattr('role', 'equalto', 'user') | list | length }}"
               "|{{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='role') | list }}|{{ ['a', 'code', 'b'] | reject('equalto', 'code') | join('+') }}"
               "|{{ [3, 1, 3, 2] | unique | list }}|{{ [1, 2] | reverse | list }}|{{ (messages | first).role }}|{{ (messages | last).role }}|{{ missing | default('dflt') }}"
               "|{{ '' | default('empty', true) }}|{{ '42' | int + 1 }}|{{ '2.5' | float }}|{{ 'a-b-a' | replace('a', 'x') }}|{{ 'x\ny' | indent(2) }}|{{ 2.567 | round(2) }}|{{ -3 | abs }}"
               "|{{ 5 | string }}|{% for k, v in {'b': 2, 'a': 1} | items %}{{ k }}{{ v }}{% endfor %}|{{ messages[0] | tojson }}|{{ {'b': [1, 2.0, 'é'], 'a': {'n': none, 't': true}} | tojson(indent=2) }}"
               "|{{ {'b': 1, 'a': 'x'} | tojson(sort_keys=true) }}|{{ [1, 'é\"\\\\'] | tojson(ensure_ascii=true) }}|{{ {'a': 1} | tojson(separators=(',', ':')) }}|{{ [] | tojson }}{{ {} | tojson(indent=4) }}"
               "|{{ '<i class=\"q\">' | e }}{{ \"Tom & Jerry's\" | escape }}{{ '<b>' | safe }}{{ 5 | e }}",
    # String and dict methods.
    "methods": "{% for m in messages %}{{ m.content.strip() }}|{{ m.content.split() | length }}|{{ m.content.startswith('Hel') }}|{{ m.content.endswith(('?', '!')) }};{% endfor %}"
               "{{ 'xxaxx'.strip('x') }} [{{ '  a '.lstrip() }}][{{ '  a '.rstrip() }}] {{ 'a,b,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} {{ 'a  b\tc'.split() }} {{ 'a b'.replace(' ', '_') }}"
               " {{ 'aBc'.upper() }}{{ 'aBc'.lower() }} {{ 'hello world'.title() }} {{ {'a': 1, 'b': 2}.keys() | list }} {{ {'a': 1}.values() | list }} {{ {'a': 1}.get('a') }}"
               " {{ {'a': 1}.get('z', 'none') }} {{ {'a': 1}.get('z') }} {{ 'banana'.count('an') }} {{ 'banana'.find('n') }}",
    # Tests.
    "tests": "{% for v in [none, 1, 1.5, 'a', [1], {'k': 1}, true] %}{{ v is none }}{{ v is number }}{{ v is integer }}{{ v is float }}{{ v is string }}{{ v is sequence }}"
             "{{ v is mapping }}{{ v is iterable }}{{ v is boolean }}{{ v is true }} {% endfor %}{{ missing is defined }}{{ missing is undefined }}{{ messages is defined }}"
             "{{ 6 is divisibleby 3 }}{{ 6 is divisibleby(4) }}{{ 3 is odd }}{{ 4 is even }}{{ 'a' is equalto 'a' }}{{ 'a' is in ['a'] }}{{ 'abc' is lower }}{{ 'ABC' is upper }}"
             "{{ 'x' is not string }}{{ tools is none }}",
    # Macros (as tool-use templates write them) and the sorting and summing filters.
    "macros": "{%- macro render(message, prefix='> ', upper=false) -%}{{ prefix }}{{ message.role | upper if upper else message.role }}: {{ message.content | trim }}{%- endmacro -%}"
              "{%- macro count_down(n) -%}{{ n }}{% if n > 0 %},{{ count_down(n - 1) }}{% endif %}{%- endmacro -%}"
              "{% for m in messages %}{{ render(m) }}|{{ render(m, upper=true, prefix='# ') }}\n{% endfor %}{{ count_down(3) }}"
              "|{{ messages | sort(attribute='role') | map(attribute='role') | join(',') }}|{{ ['b', 'A', 'c'] | sort | join }}|{{ ['b', 'A', 'c'] | sort(case_sensitive=true) | join }}"
              "|{{ [3, 1, 2] | sort(reverse=true) | list }}|{% for k, v in {'b': 1, 'A': 2} | dictsort %}{{ k }}={{ v }};{% endfor %}|{{ [1, 2, 3.5] | sum }}|{{ [{'n': 2}, {'n': 5}] | sum(attribute='n') }}"
              "|{{ [4, 2, 9] | min }}{{ [4, 2, 9] | max }}|{{ ['bb', 'a'] | max }}",
    # A template that refuses a conversation, as Llama 2's does when roles do not alternate.
    "alternation": "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                   "{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' if message['role'] == 'user' else ' ' + message['content'].strip() + ' ' + eos_token }}{% endfor %}",
}


def chat_conversations():
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                                                              "required": ["city"]}}}]
    return {
        "one_user": {"messages": [{"role": "user", "content": "Hello, how are you?"}]},
        "multi_turn": {"messages": [{"role": "system", "content": "You are terse. "}, {"role": "user", "content": "Name a colour."},
                                    {"role": "assistant", "content": " Blue. "}, {"role": "user", "content": "Another one!"}]},
        "unicode": {"messages": [{"role": "user", "content": "  Ünïcödé 🚀 {{ not a tag }} {% x %}\n\n"}, {"role": "assistant", "content": "ça va\tbien"},
                                 {"role": "user", "content": "日本語?"}]},
        "tools": {"messages": [{"role": "user", "content": "Weather in Paris?"},
                               {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}]},
                               {"role": "tool", "content": "{\"temp\": 21.5}"}, {"role": "user", "content": "Thanks"}], "tools": tools},
        "not_alternating": {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
    }


def make_chat_template_goldens():
    """Chat templates rendered as transformers' apply_chat_template renders them (its jinja2 environment, the
    special tokens and tools/documents it passes): the published templates of Qwen2.5, Llama 3.2, SmolLM2 and Mistral, and
    templates written to exercise each construct, over conversations with system prompts, tool calls and unicode,
    with and without add_generation_prompt."""
    from transformers.utils.chat_template_utils import _compile_jinja_template
    published = {k: v for k, v in json.load(open(out("chat", "published_templates.json"))).items() if not k.startswith("_")}
    templates = {**published, **CHAT_CONSTRUCT_TEMPLATES}
    specials = {"qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                "llama3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "date_string": "26 Nov 2026"},
                "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
                "mistral-nemo": {"bos_token": "<s>", "eos_token": "</s>"}}
    conversations = chat_conversations()
    cases = []
    for name, source in templates.items():
        template = _compile_jinja_template(source)
        context = specials.get(name, {"bos_token": "<s>", "eos_token": "</s>"})
        for conversation, chat in conversations.items():
            for generation_prompt in [False, True]:
                case = {"template": name, "conversation": conversation, "add_generation_prompt": generation_prompt, "context": context}
                try:
                    case["output"] = template.render(messages=chat["messages"], tools=chat.get("tools"), documents=None,
                                                     add_generation_prompt=generation_prompt, **context)
                except Exception as error:   # what the template refuses, and what it cannot do with this conversation
                    case["error"] = str(error)
                cases.append(case)
    # Keys in the order written: tojson prints dicts in their insertion order.
    with open(out("chat", "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"templates": templates, "conversations": conversations, "cases": cases}, f, ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) > 1:   # only the named steps, e.g. make_checkpoint_forms
        torch.set_num_threads(1)
        for step in sys.argv[1:]:
            globals()[step]()
        sys.exit()
    for path in [MINILM, EFFICIENTNET]:
        if not os.path.isdir(path):
            sys.exit(f"missing {path}: run Scripts/fetch-test-models first")
    torch.set_num_threads(1)
    make_tokenizer_goldens()
    make_tensor_goldens()
    make_dtype_goldens()
    make_test_images()
    make_image_goldens()
    make_tiny_models()
    make_tiny_clip_variant()
    make_clip_goldens("tiny-clip")
    make_clip_goldens("tiny-clip-p14")
    make_clip47_goldens()
    make_gpt2_goldens()
    make_decoding_goldens()
    make_asif_goldens()
    make_clip_manifests()
    make_minilm_goldens()
    make_efficientnet_goldens()
    make_yolox_goldens()
    make_captioner_goldens()
    make_metric_goldens()
    make_ptb_character_classes()
    make_ptb_goldens()
    make_adversarial_caption_evaluations()
    make_vqa_metric_goldens()
    make_pica_goldens()
    make_pica_prompt_goldens()
    make_socratic_goldens()
    make_tiny_bert()
    make_checkpoint_forms()
    make_tiny_magic()
    make_checkpoint_reader_fixtures()
    make_hub_cache()
    make_chat_template_goldens()
    make_sentencepiece_goldens()
    make_label_golden()
    make_owlvit_goldens()
    make_siglip_goldens()
    make_blip_goldens()
    make_llama_goldens()
    make_pica_local_golden()
    make_tokenizer_json_goldens()
