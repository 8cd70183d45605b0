// openai.mjs - the official OpenAI SDK (npm "openai") against `moemesh serve`.
//
// usage: node openai.mjs CASE PORT
//
// Each case exits 0 when every check holds, 1 with a message otherwise.  Run
// by tests/test_serve.c with the server it started (its model and template).
import OpenAI from "openai";
import Ajv from "ajv";

const [, , which, port] = process.argv;
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "none", maxRetries: 0 });
// MOE_NO_THINKING=1: every request turns the template's thinking off (the
// small test model never ends a reasoning part of its own)
const extra = process.env.MOE_NO_THINKING ? { chat_template_kwargs: { enable_thinking: false } } : {};
const create = (body) => client.chat.completions.create({ ...extra, ...body });

function check(ok, msg) {
  if (!ok) {
    console.error(`FAIL (${which}): ${msg}`);
    process.exit(1);
  }
}

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather of a city on a day",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", maxLength: 24 },
        days: { type: "integer", minimum: 1, maximum: 7 },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city", "days", "unit"],
      additionalProperties: false,
    },
  },
};
const clock = {
  type: "function",
  function: { name: "get_time", description: "The time", parameters: { type: "object", properties: {} } },
};
const ajv = new Ajv({ strict: false });

// Concatenates a stream's deltas the way clients do.
async function collect(stream) {
  const out = { content: "", reasoning: "", calls: [], finish: null, roles: 0 };
  for await (const ch of stream) {
    const c = ch.choices[0];
    if (c.delta.role) out.roles++;
    if (c.delta.content) out.content += c.delta.content;
    if (c.delta.reasoning_content) out.reasoning += c.delta.reasoning_content;
    for (const tc of c.delta.tool_calls ?? []) {
      const k = tc.index;
      if (!out.calls[k]) {
        check(tc.id && tc.function?.name, `the first delta of call ${k} lacks id or name: ${JSON.stringify(tc)}`);
        out.calls[k] = { id: tc.id, type: "function", function: { name: tc.function.name, arguments: "" } };
      }
      out.calls[k].function.arguments += tc.function?.arguments ?? "";
    }
    if (c.finish_reason) out.finish = c.finish_reason;
  }
  return out;
}

const cases = {
  async basic() {
    const r = await create({
      model: "kjv", messages: [{ role: "user", content: "In the beginning" }], max_tokens: 12, temperature: 0,
    });
    check(r.object === "chat.completion", `object ${r.object}`);
    check(typeof r.choices[0].message.content === "string" && r.choices[0].message.content.length > 0, "no content");
    check(r.usage.completion_tokens === 12 && r.choices[0].finish_reason === "length", JSON.stringify(r.usage));
    const s = await collect(await create({
      model: "kjv", messages: [{ role: "user", content: "In the beginning" }], max_tokens: 12, temperature: 0,
      stream: true,
    }));
    check(s.content === r.choices[0].message.content, `streamed ${JSON.stringify(s.content)} vs ${JSON.stringify(r.choices[0].message.content)}`);
    check(s.roles === 1 && s.finish === "length", `roles ${s.roles}, finish ${s.finish}`);
    const m = await client.models.list();
    check(m.data.length === 1, "models");
  },

  async errors() {
    for (const [body, want] of [
      [{ messages: [] }, "messages"],
      [{ messages: [{ role: "user", content: "x" }], tools: [{ type: "function", function: { name: "bad name!" } }] }, "tools"],
      [{ messages: [{ role: "user", content: "x" }], tools: [weather], tool_choice: { type: "function", function: { name: "nope" } } }, "tool_choice"],
      [{ messages: [{ role: "assistant", content: null, tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{not json" } }] }] }, "messages"],
    ]) {
      try {
        await create({ model: "kjv", max_tokens: 2, ...body });
        check(false, `accepted ${JSON.stringify(body)}`);
      } catch (e) {
        check(e instanceof OpenAI.APIError && e.status === 400, `not a 400 APIError: ${e}`);
        check(e.error?.param === want, `param ${e.error?.param}, want ${want}: ${e.message}`);
      }
    }
  },

  // A forced call (a named function): its arguments follow the schema; the
  // streamed call is the whole one, piece by piece.
  async tools() {
    const body = {
      model: "kjv", messages: [{ role: "user", content: "What is the weather in Paris?" }], tools: [weather, clock],
      tool_choice: { type: "function", function: { name: "get_weather" } }, max_tokens: 300, temperature: 0.7, seed: 3,
    };
    const r = await create(body);
    const msg = r.choices[0].message;
    check(r.choices[0].finish_reason === "tool_calls", `finish ${r.choices[0].finish_reason}: ${JSON.stringify(msg)}`);
    check(msg.tool_calls.length === 1 && msg.tool_calls[0].function.name === "get_weather", JSON.stringify(msg.tool_calls));
    check(!(msg.content ?? "").includes("<tool_call>"), `markup in the content: ${msg.content}`);
    const args = JSON.parse(msg.tool_calls[0].function.arguments);
    check(ajv.validate(weather.function.parameters, args), `arguments ${JSON.stringify(args)}: ${ajv.errorsText()}`);
    const s = await collect(await create({ ...body, stream: true }));
    check(s.finish === "tool_calls" && s.calls.length === 1, `stream: ${JSON.stringify(s)}`);
    check(s.calls[0].function.name === msg.tool_calls[0].function.name &&
          s.calls[0].function.arguments === msg.tool_calls[0].function.arguments,
          `streamed call ${JSON.stringify(s.calls[0])} vs ${JSON.stringify(msg.tool_calls[0])}`);
    check(s.content === (msg.content ?? ""), `streamed content ${JSON.stringify(s.content)}`);
    // "required": some call of either tool, valid for its schema
    // (one call: this model never writes the end token that would stop a run of several)
    const q = await create({ ...body, tool_choice: "required", parallel_tool_calls: false, seed: 9 });
    const tc = q.choices[0].message.tool_calls;
    check(tc?.length >= 1, `required gave no call: ${JSON.stringify(q.choices[0].message)}`);
    for (const c of tc) {
      const tool = [weather, clock].find((t) => t.function.name === c.function.name);
      check(tool && ajv.validate(tool.function.parameters, JSON.parse(c.function.arguments)),
            `required: ${JSON.stringify(c)}`);
    }
  },

  // call -> tool result -> answer, the history in OpenAI's shape.
  async agent() {
    const messages = [{ role: "system", content: "You answer with tools." },
                      { role: "user", content: "Weather in Oslo for two days, in celsius?" }];
    const r = await create({
      model: "kjv", messages, tools: [weather], tool_choice: "required", parallel_tool_calls: false,
      max_tokens: 300, seed: 1,
    });
    const call = r.choices[0].message.tool_calls[0];
    check(call && call.id, `no call: ${JSON.stringify(r.choices[0].message)}`);
    messages.push(r.choices[0].message);
    messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify({ temp_c: [3, 5] }) });
    const a = await create({ model: "kjv", messages, tools: [weather], max_tokens: 16, seed: 2 });
    check(a.choices[0].finish_reason === "length" || a.choices[0].finish_reason === "stop" ||
          a.choices[0].finish_reason === "tool_calls", `answer ${JSON.stringify(a.choices[0])}`);
    check(a.usage.prompt_tokens > r.usage.prompt_tokens, "the tool result is not in the prompt");
  },

  // response_format json_schema: the content parses and validates, whole and streamed.
  async json_schema() {
    const schema = {
      type: "object",
      properties: {
        name: { type: "string", maxLength: 16 },
        verses: { type: "array", items: { type: "integer", minimum: 1, maximum: 99 }, minItems: 1, maxItems: 3 },
        holy: { type: "boolean" },
      },
      required: ["name", "verses", "holy"],
      additionalProperties: false,
    };
    const body = {
      model: "kjv", messages: [{ role: "user", content: "Describe a book as JSON." }], max_tokens: 150, seed: 4,
      response_format: { type: "json_schema", json_schema: { name: "book", schema, strict: true } },
    };
    const r = await create(body);
    const v = JSON.parse(r.choices[0].message.content);
    check(ajv.validate(schema, v), `${r.choices[0].message.content}: ${ajv.errorsText()}`);
    const s = await collect(await create({ ...body, stream: true }));
    check(s.content === r.choices[0].message.content, `streamed ${s.content}`);
    const o = await create({ ...body, response_format: { type: "json_object" } });
    const ov = JSON.parse(o.choices[0].message.content);
    check(typeof ov === "object" && ov !== null && !Array.isArray(ov), `json_object gave ${o.choices[0].message.content}`);
  },
};

check(cases[which] !== undefined, `no case ${which}`);
cases[which]().then(() => process.exit(0), (e) => {
  console.error(`FAIL (${which}): ${e?.stack ?? e}`);
  process.exit(1);
});
