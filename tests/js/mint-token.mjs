// Mints a Meridian access token with nothing but Node's crypto: what an
// app's backend does. Usage: node mint-token.mjs auth-private.pem SUB DOC...
import { createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";

const [keyFile, sub, ...docs] = process.argv.slice(2);
const key = createPrivateKey(readFileSync(keyFile));
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
const now = Math.floor(Date.now() / 1000);
const body = `${b64({ alg: "EdDSA", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + 3600, write: docs })}`;
console.log(`${body}.${sign(null, Buffer.from(body), key).toString("base64url")}`);
