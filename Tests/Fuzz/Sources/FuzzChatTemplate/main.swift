import Foundation
import FuzzSupport
import StitchTokenizers

/// A chat template (a model folder's Jinja) parsed, then rendered over a conversation with a system prompt, a tool
/// call and unicode, within a work budget.
let conversation = try! JinjaValue(jsonText: Data(#"""
[{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "  Ünïcödé 🚀 {{ x }}"},
 {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5, null]}}}]},
 {"role": "tool", "content": "{\"t\": 1}"}, {"role": "user", "content": "ok"}]
"""#.utf8))

// Also libFuzzer's usual entry, which its runtime references.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let source = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    guard let template = try? JinjaTemplate(source) else { return 0 }
    _ = try? template.render(["messages": conversation, "bos_token": .string("<s>"), "eos_token": .string("</s>"),
                              "add_generation_prompt": .bool(true), "tools": .none], budget: 200_000)
    return 0
}

@_cdecl("FuzzChatTemplate_main")
func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt { fuzzerMain(argc, argv, fuzz) }
