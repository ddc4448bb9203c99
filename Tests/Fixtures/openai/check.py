"""Talks to `stitch serve` through the official openai client as applications do, and prints what it sent and got.

Usage: check.py BASE_URL MODEL. Prints one JSON object: {"models": [...], "cases": [{"name", "api", "request", and
"response" (a whole response) or "chunks" (a stream's chunks) or "error" ({"status", "body"})}]}. The Swift test
(OpenAIClientTests) sends each request again in-process and compares.
"""
import json
import sys

import openai

base_url, model = sys.argv[1:3]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=120)
cases = []


def run(name, api, **request):
    create = client.completions.create if api == "completions" else client.chat.completions.create
    case = {"name": name, "api": api, "request": request}
    try:
        result = create(model=model, **request)
        if request.get("stream"):
            case["chunks"] = [chunk.model_dump() for chunk in result]
        else:
            case["response"] = result.model_dump()
    except openai.APIStatusError as error:
        case["error"] = {"status": error.status_code, "body": error.body, "type": type(error).__name__}
    cases.append(case)
    return case


plain = run("plain", "completions", prompt="A photo of", max_tokens=8, temperature=0)
text = plain["response"]["choices"][0]["text"]
run("streamed", "completions", prompt="A photo of", max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
run("batched", "completions", prompt=["Hello", "A photo of"], max_tokens=5, temperature=0.8, n=2, seed=3)
run("echo", "completions", prompt="Hello there", max_tokens=4, temperature=0, echo=True, logprobs=2)
run("logprobs", "completions", prompt="The cat", max_tokens=6, temperature=0, logprobs=3)
run("stop", "completions", prompt="A photo of", max_tokens=8, temperature=0, stop=[text[3:5] or "x", "never"])
run("streamed stop", "completions", prompt="A photo of", max_tokens=8, temperature=0, stop=[text[3:6] or "x"], stream=True)
run("token ids", "completions", prompt=[1, 5, 9, 13], max_tokens=4, temperature=0)
run("streamed batch", "completions", prompt=["Hi", "Yes"], max_tokens=6, temperature=0.7, n=2, seed=1, logprobs=1, echo=True, stream=True)
conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
run("chat", "chat", messages=conversation, max_tokens=8, temperature=0)
run("chat streamed", "chat", messages=conversation, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
run("chat logprobs", "chat", messages=conversation, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
run("chat streamed logprobs", "chat", messages=conversation, max_tokens=6, temperature=0.9, seed=4, n=2, logprobs=True, stream=True)
run("chat content parts", "chat", messages=[{"role": "user", "content": [{"type": "text", "text": "Name"}, {"type": "text", "text": "a colour."}]}],
    max_tokens=5, temperature=0, stop=["\n"])
run("too many choices", "completions", prompt="x", n=40)
run("logprobs out of range", "completions", prompt="x", logprobs=9)
run("no messages", "chat", messages=[])
run("bad temperature", "chat", messages=conversation, temperature=7)
run("bad stop", "completions", prompt="x", stop=[1, 2])
run("long stop", "completions", prompt="x", stop=["x" * 1001])
run("image part", "chat", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}])
print(json.dumps({"models": [m.model_dump() for m in client.models.list()], "model": client.models.retrieve(model).model_dump(), "cases": cases}))
