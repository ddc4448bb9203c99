"""MAGiC (Su et al. 2022, "Language Models Can See: Plugging Visual Controls in Text
Generation"), written from the paper's definition with the step structure of the
published reference (cambridgeltl/MAGIC, PlugAndPlayContrastiveDecodingOneStepFast):
transformers' GPT-2 scores the k candidates in one batch over a copied cache, and
transformers' CLIP embeds every candidate text in full.

Shared by Tests/Fixtures/make_fixtures.py (golden captions) and bench_reference.py
(the timed reference of `stitch bench`'s magic row).
"""
import gzip
import json
import os

import torch
import torch.nn.functional as F


def clip_vocab_files(bpe_gz, folder):
    """vocab.json + merges.txt built from bpe_simple_vocab_16e6.txt.gz exactly as CLIP builds them."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = merges[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def _repeat_cache(past, count):
    return tuple((k.repeat_interleave(count, dim=0), v.repeat_interleave(count, dim=0)) for k, v in past)


def _select_cache(past, row):
    return tuple((k[row:row + 1], v[row:row + 1]) for k, v in past)


@torch.no_grad()
def magic_search(lm, lm_tokenizer, clip, clip_tokenizer, image_features, prompt, k=45, alpha=0.1, beta=2.0,
                 max_tokens=16, clip_text_max_len=60, clean_up=None, text_logits=None):
    """Token ids of `max_tokens` new tokens after `prompt` (a list of ids), for one image.

    At each step the LM's top-k next tokens are the candidates v, and the chosen one maximises
        (1 - alpha) * p(v | x<t)  -  alpha * max_j cos(h_v, h_j)  +  beta * softmax_k(CLIP(image, text(x<t : v)))
    where h are the LM's last-layer hidden states and text() decodes the generated tokens (the
    prompt excluded, at most clip_text_max_len of them) for CLIP's tokenizer. beta = 0 is
    contrastive search. As published: `clean_up` is transformers 4.7.0's decode clean-up and
    `clip_tokenizer` that version's slow CLIPTokenizer without ftfy; without `clean_up`, the text
    is decoded as today's transformers decodes it. `text_logits` swaps the scorer: a function of the
    candidate texts giving their image-text logits [k] (another model in CLIP's place, e.g. SigLIP).
    """
    image = image_features / image_features.norm(dim=-1, keepdim=True)       # [1, p]
    out = lm(torch.tensor([prompt]), use_cache=True, output_hidden_states=True)
    past = out.past_key_values
    context = out.hidden_states[-1]                                            # [1, t, d]
    next_logits = out.logits[:, -1, :]                                         # [1, V]
    generated = []
    for _ in range(max_tokens):
        probs = F.softmax(next_logits, dim=-1)
        top_probs, top_ids = torch.topk(probs, k, dim=-1)                     # [1, k]
        candidates = lm(top_ids.view(-1, 1), past_key_values=_repeat_cache(past, k),
                        attention_mask=torch.ones(k, context.shape[1] + 1, dtype=torch.long),
                        use_cache=True, output_hidden_states=True)
        hidden = candidates.hidden_states[-1]                                  # [k, 1, d]
        normalized_context = context / context.norm(dim=2, keepdim=True)
        normalized_hidden = hidden / hidden.norm(dim=2, keepdim=True)
        cosines = torch.matmul(normalized_hidden.squeeze(1), normalized_context[0].T)   # [k, t]
        penalty = cosines.max(dim=-1).values                                   # [k]
        if beta != 0:
            if clean_up:
                texts = [clean_up(lm_tokenizer.decode((generated + [c])[-clip_text_max_len:], clean_up_tokenization_spaces=False))
                         for c in top_ids[0].tolist()]
            else:
                texts = [lm_tokenizer.decode((generated + [c])[-clip_text_max_len:]) for c in top_ids[0].tolist()]
            if text_logits:
                magic = text_logits(texts).view(-1).softmax(dim=0)   # [k]
            else:
                tokens = clip_tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
                text = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                text = text / text.norm(dim=-1, keepdim=True)
                magic = (clip.logit_scale.exp() * torch.matmul(text, image.T)).view(-1).softmax(dim=0)   # [k]
        else:
            magic = torch.zeros(k)
        scores = (1.0 - alpha) * top_probs[0] - alpha * penalty + beta * magic
        chosen = int(scores.argmax())
        generated.append(int(top_ids[0, chosen]))
        past = _select_cache(candidates.past_key_values, chosen)
        context = torch.cat([context, hidden[chosen:chosen + 1]], dim=1)
        next_logits = candidates.logits[chosen:chosen + 1, -1, :]
    return generated
