// validate.cjs - checks documents against JSON schemas with ajv (draft
// 2020-12, ajv-formats), for tests/test_grammar.c.
//
// usage: node validate.cjs SCHEMAS.json DOCS.jsonl
// SCHEMAS.json is an array of schemas; each line of DOCS.jsonl is
// {"schema": INDEX, "doc": "JSON TEXT", "what": "..."}.  Every doc must parse
// as JSON and be valid.  Prints one line per failure and a count; exits 1 on
// any failure.
"use strict";
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");

const ajv = new Ajv2020({ strict: false, allErrors: false });
addFormats(ajv);
const schemas = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const validators = schemas.map((s) => ajv.compile(s));
let pass = 0, fail = 0;
for (const line of fs.readFileSync(process.argv[3], "utf8").split("\n")) {
  if (!line) continue;
  const { schema, doc, what } = JSON.parse(line);
  let value;
  try {
    value = JSON.parse(doc);
  } catch (e) {
    console.log(`schema ${schema} (${what}): not JSON: ${e.message}: ${JSON.stringify(doc)}`);
    fail++;
    continue;
  }
  if (validators[schema](value)) {
    pass++;
  } else {
    console.log(`schema ${schema} (${what}): invalid: ${ajv.errorsText(validators[schema].errors)}: ${doc}`);
    fail++;
  }
}
console.log(`ajv: ${pass} valid, ${fail} invalid`);
process.exit(fail ? 1 : 0);
