// SPDX-License-Identifier: MIT
//
// Chat templates without Jinja: the format is recognised from the model's
// tokenizer.chat_template by marker strings, and each known format is
// rendered by code that produces, byte for byte, what the reference Jinja
// template produces for plain {role, content} messages:
//
//   chatml  ("<|im_start|>" in the template; Qwen, SmolLM, Hermes, ...):
//       [{bos} when the template starts with it]<|im_start|>{role}\n{content}<|im_end|>\n ...
//       [+ "<|im_start|>assistant\n"]
//   llama3  ("<|start_header_id|>" and "<|end_header_id|>"; Meta-Llama-3-Instruct):
//       {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ...
//       [+ "<|start_header_id|>assistant<|end_header_id|>\n\n"]
//   llama2  ("[INST]" with Llama-2-chat's <<SYS>> and strip(); not Mistral's):
//       {bos}[INST] {<<SYS>>\n{system}\n<</SYS>>\n\n}{user|strip} [/INST] {assistant|strip}
//       {eos}...
//
// The rendered text carries the template's own BOS where it has one
// (llama3, llama2, chatml that starts with it): tokenize it with add_special = false and the
// markers the renderer lists, vocab::encode(text, false, markers), so that the template's
// "<|im_start|>" is a token and a message's is text (a message cannot open a turn of its own, as it
// cannot through the OpenAI API). Templates with more logic than this (Llama-3.1's dated system
// preamble, Qwen2.5's default system prompt, tools) are rendered as the plain format they are built
// on. An empty template falls back to chatml, as llama.cpp does for models without one; any other
// template this code does not recognise is an error, not a guess.
// Everything here is a pure function: any thread may call it.
#pragma once

#include <llmos/engine/vocab.hh>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace llmos::engine {

enum class chat_format { chatml, llama3, llama2 };

/// "chatml", "llama3", "llama2".
std::string_view name(chat_format f);

struct chat_message {
    std::string role; ///< "system", "user", "assistant" (chatml and llama3 take any)
    std::string content;
};

/// The format a tokenizer.chat_template is written for; chatml for "";
/// nothing for a template none of the markers identifies (Mistral's [INST]
/// templates among them: only Llama-2-chat's is llama2).
std::optional<chat_format> detect_chat_format(std::string_view tmpl);

/// Whether a chatml template's output starts with the BOS ("{{bos_token}}"
/// first: Hermes-2-Pro-Llama-3, LFM2); render_chat(vocab) puts it there.
bool chatml_starts_with_bos(std::string_view tmpl);

/// A rendered chat: its text, and where in it the template put its own
/// marker texts (turn headers and ends, BOS, EOS), in order. Everything
/// else (roles, contents) came from the messages.
struct rendered_chat {
    std::string text;
    std::vector<text_span> markers;
};

/// Renders `messages` in format `f`; `add_generation_prompt` opens an
/// assistant turn at the end (llama2 has none: its prompt already ends
/// with "[/INST]"). `bos` and `eos` are the texts the template knows as
/// bos_token and eos_token. Throws std::invalid_argument for llama2 when
/// the roles after an optional leading system message are not user,
/// assistant, user, ... The template raises for a user message out of
/// turn, and prints nothing for a later system message in an assistant's
/// turn: here that is refused too, not dropped without a word.
rendered_chat render_chat(chat_format f, std::span<const chat_message> messages,
                          bool add_generation_prompt, std::string_view bos, std::string_view eos);

/// Renders with the format of `v`'s chat template and its BOS/EOS texts.
/// Throws std::invalid_argument naming the problem when the template is
/// not one of the supported formats (and as render_chat).
rendered_chat render_chat(const vocab& v, std::span<const chat_message> messages,
                          bool add_generation_prompt);

} // namespace llmos::engine
