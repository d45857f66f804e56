// SPDX-License-Identifier: MIT
//
// Chat formats (see chat.hh). The reference templates, for the record:
//
// chatml:
//   {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if
//   add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// llama3 (Meta-Llama-3-8B-Instruct):
//   {% set loop_messages = messages %}{% for message in loop_messages %}{% set
//   content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+
//   message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set
//   content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if
//   add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
// llama2 (Llama-2-7b-chat-hf):
//   {% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}
//   {% set system_message = messages[0]['content'] %}{% else %}{% set
//   loop_messages = messages %}{% set system_message = false %}{% endif %}{% for
//   message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 %
//   2 == 0) %}{{ raise_exception('Conversation roles must alternate
//   user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and
//   system_message != false %}{% set content = '<<SYS>>\n' + system_message +
//   '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content =
//   message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token
//   + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] ==
//   'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}
#include <llmos/engine/chat.hh>
#include <llmos/engine/unicode.hh>
#include <llmos/engine/vocab.hh>
#include <stdexcept>

namespace llmos::engine {

namespace {

/// Python's str.isspace(), which Jinja's trim and str.strip() use.
bool py_space(uint32_t cp) {
    return (cp >= 0x1C && cp <= 0x1F) || unicode::is_whitespace(cp);
}

/// Python's str.strip() on UTF-8 text (ill-formed bytes are not space).
std::string_view py_strip(std::string_view s) {
    size_t b = 0;
    while (b < s.size()) {
        const unicode::utf8_step st = unicode::decode_utf8(s, b);
        if (!st.valid || !py_space(st.cp)) {
            break;
        }
        b += st.len;
    }
    size_t e = s.size();
    while (e > b) {
        // Back up to the start of the last character.
        size_t start = e - 1;
        while (start > b && e - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) {
            --start;
        }
        const unicode::utf8_step st = unicode::decode_utf8(s.substr(0, e), start);
        if (!st.valid || start + st.len != e || !py_space(st.cp)) {
            break;
        }
        e = start;
    }
    return s.substr(b, e - b);
}

/// Appends the template's own text, noting where it went.
void marker(rendered_chat& out, std::string_view s) {
    if (s.empty()) {
        return;
    }
    text_span& last = out.markers.emplace_back(text_span{out.text.size(), s.size()});
    out.text += s;
    // Markers that touch are one span (a special token may straddle them).
    if (out.markers.size() > 1) {
        text_span& prev = out.markers[out.markers.size() - 2];
        if (prev.off + prev.len == last.off) {
            prev.len += last.len;
            out.markers.pop_back();
        }
    }
}

// `bos`: the template's own, when it starts with one ({{bos_token}}: Hermes
// 2 Pro on Llama 3, LFM2), else "".
void render_chatml(std::span<const chat_message> msgs, bool gen, std::string_view bos,
                   rendered_chat& out) {
    marker(out, bos);
    for (const chat_message& m : msgs) {
        marker(out, "<|im_start|>");
        out.text += m.role;
        out.text += '\n';
        out.text += m.content;
        marker(out, "<|im_end|>\n");
    }
    if (gen) {
        marker(out, "<|im_start|>assistant\n");
    }
}

void render_llama3(std::span<const chat_message> msgs, bool gen, std::string_view bos,
                   rendered_chat& out) {
    for (size_t i = 0; i < msgs.size(); ++i) {
        if (i == 0) {
            marker(out, bos);
        }
        marker(out, "<|start_header_id|>");
        out.text += msgs[i].role;
        marker(out, "<|end_header_id|>\n\n");
        out.text += py_strip(msgs[i].content);
        marker(out, "<|eot_id|>");
    }
    if (gen) {
        marker(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
}

void render_llama2(std::span<const chat_message> msgs, std::string_view bos, std::string_view eos,
                   rendered_chat& out) {
    std::optional<std::string_view> system;
    if (!msgs.empty() && msgs[0].role == "system") {
        system = msgs[0].content;
        msgs = msgs.subspan(1);
    }
    for (size_t i = 0; i < msgs.size(); ++i) {
        const chat_message& m = msgs[i];
        const bool want_user = i % 2 == 0;
        if (m.role != (want_user ? "user" : "assistant")) {
            throw std::invalid_argument("chat: llama2 template: conversation roles must "
                                        "alternate user/assistant/user/assistant/... (message " +
                                        std::to_string(i + (system ? 1 : 0)) + " is '" + m.role +
                                        "')");
        }
        std::string content;
        if (i == 0 && system) {
            content = "<<SYS>>\n";
            content += *system;
            content += "\n<</SYS>>\n\n";
        }
        content += m.content;
        if (want_user) {
            marker(out, bos);
            marker(out, "[INST] ");
            out.text += py_strip(content);
            marker(out, " [/INST]");
        } else {
            marker(out, " ");
            out.text += py_strip(content);
            marker(out, " ");
            marker(out, eos);
        }
    }
}

} // namespace

std::string_view name(chat_format f) {
    switch (f) {
    case chat_format::chatml:
        return "chatml";
    case chat_format::llama3:
        return "llama3";
    case chat_format::llama2:
        return "llama2";
    }
    return "unknown";
}

bool chatml_starts_with_bos(std::string_view tmpl) {
    // Output as "{{bos_token}}", "{{- bos_token -}}", ... before the loop
    // over the messages and before any turn is written (what comes before
    // it writes nothing: {% set %}s, {% if %}s, comments).
    const size_t b = tmpl.find("bos_token");
    if (b == std::string_view::npos) {
        return false;
    }
    for (std::string_view first : {"{% for", "{%- for", "<|im_start|>"}) {
        if (tmpl.find(first) < b) {
            return false;
        }
    }
    const size_t open = tmpl.rfind("{{", b);
    return open != std::string_view::npos &&
           tmpl.substr(open + 2, b - open - 2).find_first_not_of("- ") == std::string_view::npos;
}

std::optional<chat_format> detect_chat_format(std::string_view tmpl) {
    auto has = [&](std::string_view s) { return tmpl.find(s) != std::string_view::npos; };
    if (tmpl.empty()) {
        return chat_format::chatml;
    }
    // The order is llama.cpp's (llm_chat_detect_template). Phi-4 and SmolVLM
    // use <|im_start|> with other separators: they are not chatml.
    if (has("<|im_start|>")) {
        if (has("<|im_sep|>") || has("<end_of_utterance>")) {
            return std::nullopt;
        }
        return chat_format::chatml;
    }
    // Llama-2-chat's own template only: Mistral's [INST] templates (a BOS
    // once, no <<SYS>>, other spacing; v1, v3 and v7 system prompts) render
    // otherwise, and are not guessed.
    if (has("[INST]")) {
        // Jinja's trim is str.strip(): CodeLlama's copies write it so.
        if (has("<<SYS>>") && has("bos_token + '[INST] '") &&
            (has("content.strip()") || has("content | trim") || has("content|trim")) &&
            !has("[SYSTEM_PROMPT]") && !has("[AVAILABLE_TOOLS]")) {
            return chat_format::llama2;
        }
        return std::nullopt;
    }
    if (has("<|start_header_id|>") && has("<|end_header_id|>")) {
        return chat_format::llama3;
    }
    return std::nullopt;
}

namespace {

rendered_chat render(chat_format f, std::span<const chat_message> messages,
                     bool add_generation_prompt, std::string_view bos, std::string_view eos,
                     bool chatml_bos) {
    rendered_chat out;
    switch (f) {
    case chat_format::chatml:
        render_chatml(messages, add_generation_prompt, chatml_bos ? bos : std::string_view(), out);
        break;
    case chat_format::llama3:
        render_llama3(messages, add_generation_prompt, bos, out);
        break;
    case chat_format::llama2:
        render_llama2(messages, bos, eos, out);
        break;
    }
    return out;
}

} // namespace

rendered_chat render_chat(chat_format f, std::span<const chat_message> messages,
                          bool add_generation_prompt, std::string_view bos, std::string_view eos) {
    return render(f, messages, add_generation_prompt, bos, eos, false);
}

rendered_chat render_chat(const vocab& v, std::span<const chat_message> messages,
                          bool add_generation_prompt) {
    const std::string_view tmpl = v.chat_template();
    const std::optional<chat_format> f = detect_chat_format(tmpl);
    if (!f) {
        throw std::invalid_argument(
            "chat: the model's chat template (tokenizer.chat_template) is not one of the "
            "supported formats (chatml, llama3, Llama-2-chat's llama2)");
    }
    // A chatml template that begins with the BOS puts it first.
    const bool chatml_bos = *f == chat_format::chatml && chatml_starts_with_bos(tmpl);
    return render(*f, messages, add_generation_prompt, v.token_text(v.bos()), v.token_text(v.eos()),
                  chatml_bos);
}

} // namespace llmos::engine
