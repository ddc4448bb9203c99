#!/usr/bin/env python3
"""The Python side of `stitch bench`: the same work as Stitch, done the reference
way (transformers on torch, sentence-transformers, efficientnet_lite_pytorch;
llama.cpp through llama-cpp-python for the *-llama.cpp rows), one row per process
so that each row's peak memory is its own.

    bench_reference.py prepare WORK_DIR --tokenizers D   # real-size random-weight CLIP B/32 and GPT-2 small
    bench_reference.py ROW --clip D --gpt2 D ...         # prints {"seconds": best, "peak_mb": ..., "note": ...}
"""
import argparse
import json
import os
import resource
import shutil
import sys
import time

import magic_reference  # beside this script


def best_time(fn, seconds):
    fn()  # warm-up
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


class SplitMix64:
    """Stitch's SeededGenerator, so both sides draw the same queries."""
    def __init__(self, seed):
        self.state = seed

    def next(self):
        mask = (1 << 64) - 1
        self.state = (self.state + 0x9E3779B97F4A7C15) & mask
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    def gaussian(self, rows, columns):
        import numpy as np
        values = np.zeros(rows * columns, dtype=np.float32)
        for i in range(rows * columns):
            total = np.float32(0)
            for _ in range(4):
                total = np.float32(total + np.float32((self.next() >> 40) / (1 << 24)))
            values[i] = total - np.float32(2)
        return values.reshape(rows, columns)


def unit(x):
    import numpy as np
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def asif_relative(embeddings, anchors, k, p):
    """Relative representations: the k largest cosine similarities, to the power p, L2-normalised."""
    import numpy as np
    similarities = embeddings @ anchors.T
    kept = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(similarities, kept, axis=1) ** p
    return kept, values / np.linalg.norm(values, axis=1, keepdims=True)


def noise(count):
    """The pseudo-random values in [-1, 1) of Stitch's bench worker, so both sides see the same input."""
    state, values = 0x9E3779B97F4A7C15, []
    for _ in range(count):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        values.append((state >> 40) / (1 << 23) - 1)
    return values


def prepare(work, tokenizers):
    import torch
    from transformers import CLIPConfig, CLIPModel, GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    if not os.path.exists(os.path.join(work, "clip-b32", "model.safetensors")):
        config = CLIPConfig()  # the defaults are ViT-B/32
        config.architectures = ["CLIPModel"]
        CLIPModel(config).save_pretrained(os.path.join(work, "clip-b32"), safe_serialization=True)
    if not os.path.exists(os.path.join(work, "gpt2-small", "model.safetensors")):
        config = GPT2Config()  # the defaults are GPT-2 small
        config.architectures = ["GPT2LMHeadModel"]
        GPT2LMHeadModel(config).save_pretrained(os.path.join(work, "gpt2-small"), safe_serialization=True)
    if not os.path.exists(os.path.join(work, "vit-gpt2", "model.safetensors")):
        # nlpconnect/vit-gpt2-image-captioning's architecture: ViT-B/16 encoder, GPT-2 small decoder with cross-attention.
        from transformers import ViTConfig, ViTImageProcessor, ViTModel, VisionEncoderDecoderModel
        decoder_config = GPT2Config(add_cross_attention=True, is_decoder=True)
        model = VisionEncoderDecoderModel(encoder=ViTModel(ViTConfig()), decoder=GPT2LMHeadModel(decoder_config))
        model.config.decoder_start_token_id = model.config.pad_token_id = model.config.eos_token_id = 50256
        model.save_pretrained(os.path.join(work, "vit-gpt2"), safe_serialization=True)
        ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(os.path.join(work, "vit-gpt2"))
    if not os.path.exists(os.path.join(work, "owlvit-b32", "model.safetensors")):
        from transformers import OwlViTConfig, OwlViTForObjectDetection
        config = OwlViTConfig()  # the defaults are google/owlvit-base-patch32
        config.architectures = ["OwlViTForObjectDetection"]
        OwlViTForObjectDetection(config).save_pretrained(os.path.join(work, "owlvit-b32"), safe_serialization=True)
    if not os.path.exists(os.path.join(work, "qwen2-0.5b", "model.safetensors")):
        from transformers import Qwen2Config, Qwen2ForCausalLM
        # Qwen/Qwen2.5-0.5B's shape: 24 layers of width 896, 14 query and 2 key-value heads, tied embeddings.
        config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, architectures=["Qwen2ForCausalLM"])
        Qwen2ForCausalLM(config).save_pretrained(os.path.join(work, "qwen2-0.5b"), safe_serialization=True)
    if not os.path.exists(os.path.join(work, "blip-base", "model.safetensors")):
        from transformers import BlipConfig, BlipForConditionalGeneration
        config = BlipConfig()  # the defaults are Salesforce/blip-image-captioning-base's (ViT-B/16 at 384 pixels, BERT-base decoder)
        config.architectures = ["BlipForConditionalGeneration"]
        BlipForConditionalGeneration(config).save_pretrained(os.path.join(work, "blip-base"), safe_serialization=True)
    if not os.path.exists(os.path.join(work, "siglip-base", "model.safetensors")):
        from transformers import SiglipConfig, SiglipModel
        config = SiglipConfig()  # the defaults are google/siglip-base-patch16-224's
        config.architectures = ["SiglipModel"]
        SiglipModel(config).save_pretrained(os.path.join(work, "siglip-base"), safe_serialization=True)
    # Tokenizer files, for the rows that decode or embed text (magic, owlvit); skipped when absent.
    if os.path.isdir(tokenizers):
        for name, target in [("gpt2-vocab.json", "vocab.json"), ("gpt2-merges.txt", "merges.txt")]:
            shutil.copyfile(os.path.join(tokenizers, name), os.path.join(work, "gpt2-small", target))
        for folder in ["clip-b32", "owlvit-b32"]:
            magic_reference.clip_vocab_files(os.path.join(tokenizers, "bpe_simple_vocab_16e6.txt.gz"), os.path.join(work, folder))


def qwen2_gguf(folder, work):
    """The Qwen2 folder as an F32 GGUF file for llama.cpp (written once into the work dir): tensors named and laid out
    as llama.cpp's convert_hf_to_gguf.py writes them for Qwen2 (no q/k permutation: its rope is NeoX-style like
    transformers'), 1-D tensors F32, and a stand-in vocabulary of GPT-2's 256 byte tokens and placeholders (the rows
    feed token ids, never text)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    weights_file, config_file = os.path.join(folder, "model.safetensors"), os.path.join(folder, "config.json")
    changed = int(max(os.path.getmtime(weights_file), os.path.getmtime(config_file)))
    path = os.path.join(work, "gguf", f"{os.path.basename(os.path.abspath(folder))}-{changed}-f32.gguf")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(config_file) as f:
        config = json.load(f)
    if config.get("rope_scaling"):
        raise SystemExit(f"{folder}: rope_scaling is not written into the GGUF; the llama.cpp rows need a model without it")
    writer = gguf.GGUFWriter(path + ".partial", "qwen2")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    byte_tokens = [chr(b) if b in printable else chr(256 + [c for c in range(256) if c not in printable].index(b)) for b in range(256)]
    vocabulary = config["vocab_size"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(byte_tokens + [f"<placeholder {i}>" for i in range(256, vocabulary)])
    writer.add_token_types([gguf.TokenType.NORMAL] * vocabulary)
    writer.add_token_merges(["\u0120 \u0120"])
    writer.add_bos_token_id(config.get("bos_token_id") or 0)
    writer.add_eos_token_id(config.get("eos_token_id") or 0)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, array in load_file(weights_file).items():
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            if config.get("tie_word_embeddings"):
                continue
            target = "output.weight"
        else:   # model.layers.<i>.<module>.<weight|bias>
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            target = f"blk.{layer}.{names[module]}.{kind}"
        writer.add_tensor(target, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(path + ".partial", path)
    return path


def llama_cpp_row(name, args):
    """The qwen2 rows on llama.cpp (F32, the same weights): the prompt's logits through llama_decode, the next token
    the argmax of the last position's, as llama.cpp's greedy sampler takes it."""
    try:
        import gguf  # noqa: F401
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python and gguf are not installed (pip install llama-cpp-python gguf)")
    import numpy as np
    model = llama_cpp.Llama(model_path=qwen2_gguf(args.qwen2, args.work_dir), n_ctx=1024, n_batch=512, n_ubatch=512,
                            n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    vocabulary = model.n_vocab()

    def prompt(length):   # BenchRow.qwen2Prompt
        return [(i * 7919 + 13) % min(150000, vocabulary) for i in range(length)]

    def feed(tokens):
        model.eval(tokens)
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model.ctx, -1), shape=(vocabulary,)).argmax())
    if name == "qwen2-prefill-llama.cpp":
        ids, next_token = prompt(512), []

        def prefill():
            model.reset()
            next_token[:] = [feed(ids)]
        return best_time(prefill, args.seconds), f"{len(ids)}-token prompt, next token", next_token
    tokens = []

    def decode():
        model.reset()
        tokens[:] = [feed(prompt(16))]
        while len(tokens) < 32:
            tokens.append(feed([tokens[-1]]))
    return best_time(decode, args.seconds) / 32, "per token, 32 after 16", tokens


def row(name, args):
    if name.endswith("-llama.cpp"):
        return llama_cpp_row(name, args)
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # --precision bf16: what a torch user turns on for bfloat16 on a CPU (weights stay FP32; products run in bfloat16).
    # bf16-weights and int8-weights run at FP32: torch's bfloat16 weights (model.to(torch.bfloat16)) compute in bfloat16
    # too, and its dynamic quantization rounds the activations to 8 bits as well (and skips GPT-2's Conv1D layers).
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        if name.startswith("clip-image"):
            from transformers import CLIPModel
            model = CLIPModel.from_pretrained(args.clip).eval()
            batch = int(name.rsplit("-", 1)[1])
            pixels = torch.randn(batch, 3, 224, 224)
            return best_time(lambda: model.get_image_features(pixel_values=pixels), args.seconds), f"batch {batch}"
        if name == "clip-text":
            from transformers import CLIPModel
            model = CLIPModel.from_pretrained(args.clip).eval()
            ids = torch.randint(1, 49405, (45, 16))
            ids[:, 0], ids[:, -1] = 49406, 49407
            return best_time(lambda: model.get_text_features(input_ids=ids), args.seconds), "45 texts x 16 tokens"
        if name == "gpt2-greedy":
            from transformers import GPT2LMHeadModel
            model = GPT2LMHeadModel.from_pretrained(args.gpt2).eval()
            prompt, tokens = torch.tensor([[50256, 32, 4590, 286, 257]]), []
            mask = torch.ones_like(prompt)

            def run():
                # No end token (eos_token_id=None): 64 tokens whatever they are, the end token chosen like any other, as
                # Stitch's side does (min_new_tokens would forbid it instead, and the outputs could part).
                tokens[:] = model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=64, eos_token_id=None,
                                           pad_token_id=50256)[0, 5:].tolist()
            return best_time(run, args.seconds) / 64, "per token, 64 new tokens", tokens
        if name == "magic":
            from transformers import CLIPModel, CLIPTokenizerFast, GPT2LMHeadModel, GPT2TokenizerFast
            lm, lm_tokenizer = GPT2LMHeadModel.from_pretrained(args.gpt2).eval(), GPT2TokenizerFast.from_pretrained(args.gpt2)
            clip, clip_tokenizer = CLIPModel.from_pretrained(args.clip).eval(), CLIPTokenizerFast.from_pretrained(args.clip)
            pixels = torch.tensor(noise(3 * 224 * 224)).view(1, 3, 224, 224)
            tokens = []

            def caption():
                features = clip.get_image_features(pixel_values=pixels)
                tokens[:] = magic_reference.magic_search(lm, lm_tokenizer, clip, clip_tokenizer, features, [50256],
                                                         k=45, alpha=0.1, beta=2.0, max_tokens=16)
            return best_time(caption, args.seconds), "per caption, 16 tokens, k=45", tokens
        if name.startswith("asif-"):
            import numpy as np
            from safetensors.numpy import load_file
            # numpy as the ASIF paper's code uses it; the F16 matrices are converted once, untimed.
            index = load_file(os.path.join(args.work_dir, f"{name}.asif"))
            anchor_images = index["image_anchors"].astype(np.float32)
            anchor_texts = index["text_anchors"].astype(np.float32)
            generator = SplitMix64(7)
            images, texts = unit(generator.gaussian(16, 1280)), unit(generator.gaussian(100, 384))
            best = []

            def query():
                image_idx, image_val = asif_relative(images, anchor_images, 800, 8.0)
                text_idx, text_val = asif_relative(texts, anchor_texts, 800, 8.0)
                dense = np.zeros((len(images), len(anchor_images)), dtype=np.float32)
                np.put_along_axis(dense, image_idx, image_val, axis=1)
                scores = (dense[:, text_idx] * text_val[None]).sum(-1)          # [images, texts]
                best[:] = np.argmax(scores, axis=1).tolist()
            return best_time(query, args.seconds), "16 images x 100 texts, k=800", best
        if name == "minilm":
            from sentence_transformers import SentenceTransformer
            model = SentenceTransformer(args.minilm, device="cpu")
            sentences = [f"a photo of {i} zebras standing next to a red truck on a sunny street" for i in range(32)]
            return best_time(lambda: model.encode(sentences, batch_size=32), args.seconds), "batch 32"
        if name == "captioner":
            from transformers import VisionEncoderDecoderModel
            model = VisionEncoderDecoderModel.from_pretrained(args.captioner).eval()
            pixels = torch.tensor(noise(3 * 224 * 224)).view(1, 3, 224, 224)
            tokens = []

            def caption():
                # 4 beams, 15 new tokens (the checkpoint's max_length 16); no end token, so both sides run all 15 steps.
                output = model.generate(pixel_values=pixels, num_beams=4, max_new_tokens=15, do_sample=False,
                                        eos_token_id=None, pad_token_id=50256, early_stopping=False)
                tokens[:] = output[0, 1:].tolist()
            return best_time(caption, args.seconds), "per caption, 4 beams x 15", tokens
        if name == "blip-caption":
            from transformers import BlipForConditionalGeneration
            model = BlipForConditionalGeneration.from_pretrained(args.blip).eval()
            size = model.config.vision_config.image_size
            pixels = torch.tensor(noise(3 * size * size)).view(1, 3, size, size)
            start = torch.tensor([[model.config.text_config.bos_token_id]])
            tokens = []

            def caption():
                # BlipForConditionalGeneration.generate's own steps, with no end token so that both sides run all 20.
                states = model.vision_model(pixel_values=pixels)[0]
                output = model.text_decoder.generate(input_ids=start, eos_token_id=None, pad_token_id=model.config.text_config.pad_token_id,
                                                     encoder_hidden_states=states, encoder_attention_mask=torch.ones(states.shape[:-1], dtype=torch.long),
                                                     num_beams=3, max_new_tokens=20, do_sample=False, early_stopping=False)
                tokens[:] = output[0, 1:].tolist()
            return best_time(caption, args.seconds), "per caption, 3 beams x 20", tokens
        if name == "siglip":
            from transformers import SiglipModel
            model = SiglipModel.from_pretrained(args.siglip).eval()
            size = model.config.vision_config.image_size
            pixels = torch.tensor(noise(3 * size * size)).view(1, 3, size, size)
            values = noise(16 * 63)   # BenchRow.siglipTexts
            ids = torch.tensor([[2 + int((v + 1) * 15000) for v in values[t * 63:(t + 1) * 63]] + [1] for t in range(16)])
            best = []

            def score():
                logits = model(input_ids=ids, pixel_values=pixels).logits_per_image[0]
                best[:] = logits.argsort(descending=True, stable=True)[:3].tolist()
            return best_time(score, args.seconds), "1 image + 16 texts x 64", best
        if name == "yolox":
            import yolox_reference
            session = yolox_reference.session(os.path.join(args.yolox, "yolox_nano.onnx"), args.threads)
            classes = []

            def detect():
                classes[:] = [c for c, _, _ in yolox_reference.detect(session, args.image)[3]]
            return best_time(detect, args.seconds), "per image, 416x416", classes
        if name == "owlvit":
            from transformers import CLIPTokenizerFast, OwlViTForObjectDetection
            model = OwlViTForObjectDetection.from_pretrained(args.owlvit).eval()
            queries = ["a photo of a cat", "a dog", "a traffic light", "a stroller", "a red truck"]
            text = CLIPTokenizerFast.from_pretrained(args.owlvit)(queries, padding="max_length", max_length=16, return_tensors="pt")
            pixels = torch.tensor(noise(3 * 768 * 768)).view(1, 3, 768, 768)
            best = []

            def detect():   # as transformers' documented use: text and image through the model together
                logits = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels).logits
                best[:] = logits[0].argmax(-1).tolist()
            return best_time(detect, args.seconds), "per 768x768 image, 5 queries", best
        if name in ("qwen2-prefill", "qwen2-decode"):
            from transformers import Qwen2ForCausalLM
            model = Qwen2ForCausalLM.from_pretrained(args.qwen2, torch_dtype=torch.float32).eval()

            def prompt(length):   # BenchRow.qwen2Prompt
                return torch.tensor([[(i * 7919 + 13) % min(150000, model.config.vocab_size) for i in range(length)]])
            if name == "qwen2-prefill":
                ids, next_token = prompt(min(512, model.config.max_position_embeddings)), []

                def prefill():   # the LM head on the last position only, as generate's prefill does
                    next_token[:] = [int(model(ids, num_logits_to_keep=1).logits[0, -1].argmax())]
                return best_time(prefill, args.seconds), f"{ids.shape[1]}-token prompt, next token", next_token
            ids, tokens = prompt(16), []

            def decode():
                tokens[:] = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32, eos_token_id=None,
                                           pad_token_id=0)[0, 16:].tolist()   # no end token, as gpt2-greedy
            return best_time(decode, args.seconds) / 32, "per token, 32 after 16", tokens
        if name == "efficientnet":
            from efficientnet_lite_pytorch import EfficientNet
            from safetensors.torch import load_file
            model = EfficientNet.from_name("efficientnet-lite0").eval()
            # A converted folder holds model.safetensors; the PyPI package's weights are a torch .pth (pytorch_model.bin).
            safetensors = os.path.join(args.efficientnet, "model.safetensors")
            state = load_file(safetensors) if os.path.exists(safetensors) else \
                torch.load(os.path.join(args.efficientnet, "pytorch_model.bin"), weights_only=True)
            model.load_state_dict(state)
            pixels = torch.randn(1, 3, 224, 224)
            return best_time(lambda: model(pixels), args.seconds), "batch 1"
    raise SystemExit(f"unknown row {name}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("row")
    parser.add_argument("work", nargs="?")
    parser.add_argument("--clip")
    parser.add_argument("--gpt2")
    parser.add_argument("--minilm")
    parser.add_argument("--efficientnet")
    parser.add_argument("--captioner")
    parser.add_argument("--owlvit")
    parser.add_argument("--qwen2")
    parser.add_argument("--blip")
    parser.add_argument("--siglip")
    parser.add_argument("--yolox")
    parser.add_argument("--image")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--tokenizers", default=os.path.join("..", "shared", "models", "tokenizers"))
    parser.add_argument("--work-dir")
    parser.add_argument("--precision", choices=["fp32", "bf16", "bf16-weights", "int8-weights"], default="fp32")
    args = parser.parse_args()
    if args.row == "prepare":
        prepare(args.work, args.tokenizers)
        return
    seconds, note, *output = row(args.row, args)
    result = {"seconds": seconds, "peak_mb": peak_resident_mb(), "note": note}
    if output:
        result["output"] = output[0]
    print(json.dumps(result))


def peak_resident_mb():
    """VmHWM: unlike ru_maxrss it starts afresh at exec, so it is this process's own peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
