// A consumer administration's Node.js client, on npm's http-message-signatures (dhensby), unmodified: signs an
// exchange request (RFC 9421, with an RFC 9530 Content-Digest it computes itself, as the library asks), sends it
// with fetch, then verifies the broker's response signature against the broker's JWKS, the request passed along
// for the components the response binds to it ("signature";req).
//
// stdin: {url, body, jwk (private, with kid), alg: "ed25519" | "ecdsa-p256-sha256", broker_jwks, headers?}
// stdout: {status, body, verified: true | false, error?}
import { createHash, createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import signatures from 'http-message-signatures';

const { httpbis: { signMessage, verifyMessage }, createSigner, createVerifier } = signatures;

const input = JSON.parse(await new Promise((resolve) => createInterface({ input: process.stdin }).once('line', resolve)));
const digest = (body) => `sha-256=:${createHash('sha256').update(body).digest('base64')}:`;

const request = {
  method: 'POST',
  url: input.url,
  headers: { 'content-type': 'application/json', 'content-digest': digest(input.body), ...(input.headers ?? {}) },
};
const fields = ['@method', '@target-uri', 'content-digest', ...('authorization' in request.headers ? ['authorization'] : [])];
const signed = await signMessage({
  key: createSigner(createPrivateKey({ key: input.jwk, format: 'jwk' }), input.alg, input.jwk.kid),
  fields,
  params: ['created', 'keyid', 'alg', 'nonce'],
  paramValues: { nonce: randomBytes(16).toString('base64url') },
}, request);

const response = await fetch(input.url, { method: 'POST', headers: signed.headers, body: input.body });
const text = await response.text();
const headers = Object.fromEntries(response.headers.entries());
let verified = false;
let error;
try {
  if (headers['content-digest'] !== digest(text)) throw new Error('Content-Digest does not match the body');
  const keys = new Map(input.broker_jwks.keys.map((jwk) => [jwk.kid, jwk]));
  verified = await verifyMessage({
    async keyLookup(params) {
      const jwk = keys.get(params.keyid);
      return jwk && { id: jwk.kid, algs: ['ed25519'], verify: createVerifier(createPublicKey({ key: jwk, format: 'jwk' }), 'ed25519') };
    },
    requiredFields: ['@status', 'content-digest'],
    requiredParams: ['created', 'keyid'],
  }, { status: response.status, headers }, signed);
} catch (e) {
  error = `${e.name}: ${e.message}`;
}
console.log(JSON.stringify({ status: response.status, body: text, verified: verified === true, error }));
