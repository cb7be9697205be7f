// Runs the GraphQL-over-HTTP conformance audit of the npm package
// `graphql-http` (auditServer) against the URL given as the only argument
// and prints its results as one JSON array: id, name, status, and for a
// result that is not `ok` its reason and the answer it judged. Driven by
// tests/gateway.rs, which installs the package; found through NODE_PATH.
'use strict';

const { auditServer } = require('graphql-http');

async function main() {
  const url = process.argv[2];
  if (!url) {
    throw new Error('usage: node graphql-http.cjs URL');
  }
  const results = await auditServer({ url });
  const out = [];
  for (const result of results) {
    const entry = { id: result.id, name: result.name, status: result.status };
    if (result.status !== 'ok') {
      entry.reason = result.reason;
      try {
        entry.httpStatus = result.response.status;
        entry.body = await result.response.text();
      } catch (e) {
        entry.body = `(unreadable: ${e})`;
      }
    }
    out.push(entry);
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
