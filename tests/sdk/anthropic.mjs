// anthropic.mjs - the official Anthropic SDK (npm "@anthropic-ai/sdk") against
// `moemesh serve`.
//
// usage: node anthropic.mjs CASE PORT
//
// Each case exits 0 when every check holds, 1 with a message otherwise.  Run
// by tests/test_serve.c with the server it started (its model and template).
import Anthropic from "@anthropic-ai/sdk";
import Ajv from "ajv";

const [, , which, port] = process.argv;
const client = new Anthropic({ baseURL: `http://127.0.0.1:${port}`, apiKey: "none", maxRetries: 0 });
// MOE_NO_THINKING=1: every request turns thinking off (the small test model
// never ends a reasoning part of its own)
const extra = process.env.MOE_NO_THINKING ? { thinking: { type: "disabled" } } : {};

// the prompt's tokens: input_tokens counts only those the prompt cache did not hold (Anthropic's usage)
const prompt = (u) => u.input_tokens + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);

function check(ok, msg) {
  if (!ok) {
    console.error(`FAIL (${which}): ${msg}`);
    process.exit(1);
  }
}

const weather = {
  name: "get_weather",
  description: "The weather of a city on a day",
  input_schema: {
    type: "object",
    properties: {
      city: { type: "string", maxLength: 24 },
      days: { type: "integer", minimum: 1, maximum: 7 },
    },
    required: ["city", "days"],
    additionalProperties: false,
  },
};
const ajv = new Ajv({ strict: false });

const cases = {
  async basic() {
    const body = {
      model: "kjv", max_tokens: 12, temperature: 0, system: "You are the King James Bible.",
      messages: [{ role: "user", content: "In the beginning" }],
    };
    const r = await client.messages.create({ ...extra, ...body });
    check(r.type === "message" && r.role === "assistant", JSON.stringify(r));
    check(r.content.length === 1 && r.content[0].type === "text" && r.content[0].text.length > 0, JSON.stringify(r.content));
    check(r.stop_reason === "max_tokens" && r.usage.output_tokens === 12 && r.usage.input_tokens > 0, JSON.stringify(r));
    // the SDK's stream helper rebuilds the same message from the events
    const stream = client.messages.stream({ ...extra, ...body });
    const kinds = [];
    stream.on("streamEvent", (e) => kinds.push(e.type));
    const m = await stream.finalMessage();
    check(JSON.stringify(m.content) === JSON.stringify(r.content), `streamed ${JSON.stringify(m.content)} vs ${JSON.stringify(r.content)}`);
    check(m.stop_reason === "max_tokens" && m.usage.output_tokens === 12, JSON.stringify(m));
    // the same body again: the server's prefix cache (on by default) holds all but its last token
    check(prompt(m.usage) === prompt(r.usage) && m.usage.cache_read_input_tokens === prompt(r.usage) - 1,
          `usage of the repeat ${JSON.stringify(m.usage)} vs ${JSON.stringify(r.usage)}`);
    check(kinds[0] === "message_start" && kinds.at(-1) === "message_stop" && kinds.includes("content_block_start") &&
          kinds.includes("content_block_delta") && kinds.includes("content_block_stop") && kinds.includes("message_delta"),
          `events ${kinds}`);
    const c = await client.messages.countTokens({ ...extra, model: "kjv", system: body.system, messages: body.messages });
    check(c.input_tokens === prompt(r.usage), `count_tokens ${c.input_tokens} vs ${JSON.stringify(r.usage)}`);
    // a stop sequence met is named
    const s = await client.messages.create({ ...extra, ...body, max_tokens: 40, stop_sequences: ["LORD", "God", "the"] });
    check(s.stop_reason === "stop_sequence" && ["LORD", "God", "the"].includes(s.stop_sequence), `stop ${s.stop_reason} ${s.stop_sequence}`);
  },

  async errors() {
    for (const body of [
      { model: "kjv", messages: [{ role: "user", content: "x" }] },
      { model: "kjv", max_tokens: 4, messages: [{ role: "system", content: "x" }] },
      { model: "kjv", max_tokens: 4, messages: [{ role: "user", content: [{ type: "image", source: {} }] }] },
      { model: "kjv", max_tokens: 4, messages: [{ role: "user", content: "x" }], tools: [weather], tool_choice: { type: "tool", name: "nope" } },
    ]) {
      try {
        await client.messages.create({ ...extra, ...body });
        check(false, `accepted ${JSON.stringify(body)}`);
      } catch (e) {
        check(e instanceof Anthropic.BadRequestError, `not a BadRequestError: ${e}`);
        check(e.error?.type === "error" && e.error?.error?.type === "invalid_request_error", JSON.stringify(e.error));
      }
    }
  },

  // a forced tool_use, its input valid; streamed = whole; then the agent loop
  async tools() {
    const body = {
      model: "kjv", max_tokens: 300, temperature: 0.7, tools: [weather], tool_choice: { type: "tool", name: "get_weather" },
      messages: [{ role: "user", content: "What is the weather in Paris?" }],
    };
    const r = await client.messages.create({ ...extra, ...body });
    check(r.stop_reason === "tool_use", `stop ${r.stop_reason}: ${JSON.stringify(r.content)}`);
    const use = r.content.find((b) => b.type === "tool_use");
    check(use && use.name === "get_weather" && use.id.startsWith("toolu_"), JSON.stringify(r.content));
    check(ajv.validate(weather.input_schema, use.input), `input ${JSON.stringify(use.input)}: ${ajv.errorsText()}`);
    check(!r.content.some((b) => b.type === "text" && b.text.includes("<tool_call>")), "markup in a text block");
    const m = await client.messages.stream({ ...extra, ...body }).finalMessage();
    const suse = m.content.find((b) => b.type === "tool_use");
    check(m.stop_reason === "tool_use" && suse && suse.name === use.name && ajv.validate(weather.input_schema, suse.input),
          `streamed ${JSON.stringify(m.content)}`);
    // tool_result -> answer
    const messages = [...body.messages, { role: "assistant", content: r.content },
      { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "12 degrees, rain" }] }];
    const a = await client.messages.create({ ...extra, model: "kjv", max_tokens: 16, tools: [weather], messages });
    check(["end_turn", "max_tokens", "tool_use"].includes(a.stop_reason), JSON.stringify(a));
    check(prompt(a.usage) > prompt(r.usage), "the tool result is not in the prompt");
    // "any": some call
    // (one call: this model never writes the end token that would stop a run of several)
    const any = await client.messages.create({ ...extra, ...body, tool_choice: { type: "any", disable_parallel_tool_use: true } });
    check(any.stop_reason === "tool_use", `any: ${JSON.stringify(any.content)}`);
  },
};

check(cases[which] !== undefined, `no case ${which}`);
cases[which]().then(() => process.exit(0), (e) => {
  console.error(`FAIL (${which}): ${e?.stack ?? e}`);
  process.exit(1);
});
