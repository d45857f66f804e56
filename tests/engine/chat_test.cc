// SPDX-License-Identifier: MIT
//
// Chat templates: format detection on the real templates' marker strings,
// and renderings compared byte for byte with what Jinja2 (3.1, in
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), as
// transformers runs it) produced from the reference templates quoted in
// chat.cc, for the same messages.
#include <gtest/gtest.h>
#include <llmos/engine/chat.hh>
#include <llmos/engine/vocab.hh>
#include <stdexcept>
#include <string>
#include <vector>

using namespace llmos::engine;

namespace {

using msgs = std::vector<chat_message>;

const msgs with_system{
    {"system", "You are helpful."},
    {"user", "Hello!"},
    {"assistant", "Hi there."},
    {"user", "  How are you?\n"},
};
const msgs one{{"user", "hi"}};
// Leading and trailing white space of every kind Python's strip() removes
// (U+3000, U+001C, U+00A0, U+2003, U+2028), and a tab inside that stays.
const msgs spaces{
    {"user", "\xE3\x80\x80\x1C tab\tin\xC2\xA0 \n"},
    {"assistant", " \xE2\x80\x83ok\xE2\x80\xA8"},
};

std::string chatml(const msgs& m, bool gen) {
    return render_chat(chat_format::chatml, m, gen, "<s>", "</s>").text;
}
std::string llama3(const msgs& m, bool gen) {
    return render_chat(chat_format::llama3, m, gen, "<|begin_of_text|>", "<|end_of_text|>").text;
}
std::string llama2(const msgs& m, bool gen) {
    return render_chat(chat_format::llama2, m, gen, "<s>", "</s>").text;
}

/// The rendered text inside (true) or outside (false) the markers.
std::string part(const rendered_chat& r, bool inside) {
    std::string in;
    std::string out;
    size_t at = 0;
    for (const text_span& s : r.markers) {
        EXPECT_LE(at, s.off) << "markers in order, apart";
        EXPECT_LE(s.off + s.len, r.text.size());
        out += r.text.substr(at, s.off - at);
        in += r.text.substr(s.off, s.len);
        at = s.off + s.len;
    }
    out += r.text.substr(std::min(at, r.text.size()));
    return inside ? in : out;
}

} // namespace

TEST(chat, markers_are_the_templates_text_and_nothing_of_the_messages) {
    const rendered_chat c = render_chat(chat_format::chatml, with_system, true, "<s>", "</s>");
    EXPECT_EQ("<|im_start|><|im_end|>\n<|im_start|><|im_end|>\n<|im_start|><|im_end|>\n<|im_start|>"
              "<|im_end|>\n<|im_start|>assistant\n",
              part(c, true));
    EXPECT_EQ("system\nYou are helpful.user\nHello!assistant\nHi there.user\n  How are you?\n",
              part(c, false));
    const rendered_chat l3 =
        render_chat(chat_format::llama3, with_system, true, "<|begin_of_text|>", "<|end_of_text|>");
    std::string turns;
    for (int i = 0; i < 4; ++i) {
        turns += "<|start_header_id|><|end_header_id|>\n\n<|eot_id|>";
    }
    EXPECT_EQ("<|begin_of_text|>" + turns + "<|start_header_id|>assistant<|end_header_id|>\n\n",
              part(l3, true));
    EXPECT_EQ("systemYou are helpful.userHello!assistantHi there.userHow are you?",
              part(l3, false));
    const rendered_chat l2 = render_chat(chat_format::llama2, with_system, true, "<s>", "</s>");
    EXPECT_EQ("<s>[INST]  [/INST]  </s><s>[INST]  [/INST]", part(l2, true));
    EXPECT_EQ("<<SYS>>\nYou are helpful.\n<</SYS>>\n\nHello!Hi there.How are you?",
              part(l2, false));
    // Markers that touch are one span: "<|im_end|>\n" and the next
    // "<|im_start|>" here.
    ASSERT_EQ(5u, c.markers.size());
    EXPECT_EQ("<|im_end|>\n<|im_start|>", c.text.substr(c.markers[1].off, c.markers[1].len));
}

TEST(chat, detects_formats_from_templates) {
    EXPECT_EQ(chat_format::chatml,
              detect_chat_format("{% for message in messages %}{{'<|im_start|>' + "
                                 "message['role'] + '\\n' + message['content'] + '<|im_end|>' "
                                 "+ '\\n'}}{% endfor %}"));
    EXPECT_EQ(chat_format::llama3,
              detect_chat_format("{% set content = '<|start_header_id|>' + message['role'] + "
                                 "'<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                                 "'<|eot_id|>' %}"));
    EXPECT_EQ(chat_format::llama2,
              detect_chat_format("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
                                 "{% set content = '<<SYS>>\\n' + system_message %}"));
    // No template: chatml, as llama.cpp falls back to.
    EXPECT_EQ(chat_format::chatml, detect_chat_format(""));
    // Mistral's [INST] templates render otherwise than Llama-2-chat's (one
    // BOS, no <<SYS>>, other spaces): not guessed. Instruct v0.2, v1
    // (system in the first [INST]), v7 ([SYSTEM_PROMPT]).
    EXPECT_EQ(std::nullopt,
              detect_chat_format("{{ bos_token }}{% for message in messages %}{% if "
                                 "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
                                 "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
                                 "message['content'] + eos_token}}{% endif %}{% endfor %}"));
    EXPECT_EQ(std::nullopt, detect_chat_format("{{ ' [INST] ' + system_message }}"));
    EXPECT_EQ(std::nullopt, detect_chat_format("{{ '[SYSTEM_PROMPT]' }}{{ bos_token + '[INST] ' + "
                                               "content.strip() }}{{ '<<SYS>>' }}"));
    // Where a chatml template's BOS is.
    EXPECT_TRUE(chatml_starts_with_bos("{{bos_token}}{% for m in messages %}"));
    EXPECT_TRUE(chatml_starts_with_bos("{{- bos_token }}{%- for m in messages %}"));
    EXPECT_FALSE(chatml_starts_with_bos("{% for m in messages %}{{ bos_token }}"));
    EXPECT_FALSE(chatml_starts_with_bos("{{'<|im_start|>'}}{{ bos_token }}"));
    EXPECT_FALSE(chatml_starts_with_bos("{% for m in messages %}{{'<|im_start|>'}}"));
    // After what writes nothing (dolphin-2.8's first lines).
    EXPECT_TRUE(chatml_starts_with_bos("{% if not add_generation_prompt is defined %}{% set "
                                       "add_generation_prompt = false %}{% endif %}{{ bos_token "
                                       "}}{% for message in messages %}"));
    EXPECT_FALSE(chatml_starts_with_bos("{{ 'x' + bos_token }}{% for m in messages %}"));
    // Llama-2-chat's template as CodeLlama's copies write it (| trim).
    EXPECT_EQ(chat_format::llama2,
              detect_chat_format("{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
                                 "{% set content = '<<SYS>>\\n' + system_message %}"));
    // Phi-4 uses <|im_start|> with <|im_sep|>: not chatml, not guessed.
    EXPECT_EQ(std::nullopt, detect_chat_format("<|im_start|>{{ role }}<|im_sep|>"));
    EXPECT_EQ(std::nullopt, detect_chat_format("{{ '<start_of_turn>' + role }}"));
    EXPECT_EQ("chatml", name(chat_format::chatml));
    EXPECT_EQ("llama3", name(chat_format::llama3));
    EXPECT_EQ("llama2", name(chat_format::llama2));
}

TEST(chat, chatml_matches_jinja) {
    EXPECT_EQ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>"
              "\n<|im_start|>assistant\nHi there.<|im_end|>\n<|im_start|>user\n  How are "
              "you?\n<|im_end|>\n",
              chatml(with_system, false));
    EXPECT_EQ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>"
              "\n<|im_start|>assistant\nHi there.<|im_end|>\n<|im_start|>user\n  How are "
              "you?\n<|im_end|>\n<|im_start|>assistant\n",
              chatml(with_system, true));
    EXPECT_EQ("<|im_start|>user\nhi<|im_end|>\n", chatml(one, false));
    EXPECT_EQ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", chatml(one, true));
    // chatml does not trim.
    EXPECT_EQ("<|im_start|>user\n\xE3\x80\x80\x1C tab\tin\xC2\xA0 \n<|im_end|>\n<|im_start|>"
              "assistant\n \xE2\x80\x83ok\xE2\x80\xA8<|im_end|>\n<|im_start|>assistant\n",
              chatml(spaces, true));
    EXPECT_EQ("<|im_start|>assistant\n", chatml({}, true));
    EXPECT_EQ("", chatml({}, false));
}

TEST(chat, llama3_matches_jinja) {
    EXPECT_EQ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are "
              "helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|"
              "start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|><|start_header_"
              "id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>",
              llama3(with_system, false));
    EXPECT_EQ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are "
              "helpful.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|"
              "start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|><|start_header_"
              "id|>user<|end_header_id|>\n\nHow are you?<|eot_id|><|start_header_id|>assistant<|"
              "end_header_id|>\n\n",
              llama3(with_system, true));
    EXPECT_EQ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
              llama3(one, false));
    EXPECT_EQ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_"
              "header_id|>assistant<|end_header_id|>\n\n",
              llama3(one, true));
    EXPECT_EQ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\ntab\tin<|eot_id|><|"
              "start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>",
              llama3(spaces, false));
    // The BOS belongs to the first message: none without messages.
    EXPECT_EQ("<|start_header_id|>assistant<|end_header_id|>\n\n", llama3({}, true));
}

TEST(chat, llama2_matches_jinja) {
    const std::string sys = "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHello! [/INST] Hi "
                            "there. </s><s>[INST] How are you? [/INST]";
    EXPECT_EQ(sys, llama2(with_system, false));
    EXPECT_EQ(sys, llama2(with_system, true)); // no generation prompt in this format
    EXPECT_EQ("<s>[INST] hi [/INST]", llama2(one, true));
    EXPECT_EQ("<s>[INST] tab\tin [/INST] ok </s>", llama2(spaces, false));
    // The system text is inside the stripped content: its spaces stay.
    EXPECT_EQ("<s>[INST] <<SYS>>\n  be brief \n<</SYS>>\n\n q [/INST]",
              llama2({{"system", "  be brief "}, {"user", " q "}}, false));
}

TEST(chat, llama2_rejects_roles_out_of_turn) {
    EXPECT_THROW(llama2({{"assistant", "x"}}, false), std::invalid_argument);
    EXPECT_THROW(llama2({{"user", "a"}, {"user", "b"}}, false), std::invalid_argument);
    EXPECT_THROW(llama2({{"system", "s"}, {"assistant", "b"}}, false), std::invalid_argument);
    // The template would drop this system message without a word.
    EXPECT_THROW(llama2({{"user", "a"}, {"system", "b"}}, false), std::invalid_argument);
    try {
        llama2({{"user", "a"}, {"user", "b"}}, false);
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string::npos, std::string(e.what()).find("message 1 is 'user'")) << e.what();
    }
}

TEST(chat, renders_with_a_vocabs_template_and_tokens) {
    vocab_data d;
    d.model = "gpt2";
    d.pre = "llama-bpe";
    d.tokens = {"a", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"};
    d.types = {1, 3, 3, 3};
    d.bos_id = 1;
    d.eos_id = 2;
    d.chat_template = "{{ '<|start_header_id|>' }}{{ '<|end_header_id|>' }}";
    vocab v(d);
    EXPECT_EQ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_"
              "header_id|>assistant<|end_header_id|>\n\n",
              render_chat(v, one, true).text);
    // The rendered prompt carries BOS: parse its markers, add nothing.
    const rendered_chat r = render_chat(v, one, true);
    const auto ids = v.encode(r.text, false, r.markers);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(1, ids.front());

    d.chat_template = "{{ '<start_of_turn>' }}";
    vocab unknown(d);
    EXPECT_THROW(render_chat(unknown, one, true), std::invalid_argument);

    // A chatml template that starts with the BOS (Hermes-2-Pro-Llama-3)
    // puts it first, as a marker; one that does not, does not.
    d.chat_template = "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + "
                      "message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
                      "'\\n'}}{% endfor %}";
    vocab hermes(d);
    const rendered_chat h = render_chat(hermes, one, true);
    EXPECT_EQ("<|begin_of_text|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", h.text);
    ASSERT_FALSE(h.markers.empty());
    EXPECT_EQ(0u, h.markers[0].off);
    EXPECT_EQ(1, hermes.encode(h.text, false, h.markers).front());
    d.chat_template = d.chat_template.substr(std::string_view("{{bos_token}}").size());
    vocab plain(d);
    EXPECT_EQ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
              render_chat(plain, one, true).text);
}
