// The citizens' OpenID Provider on panva's oidc-provider (OpenID-certified), as an operator would set it up for
// the broker, in three shapes: FranceConnect-like (one scope per claim, acr eidas1, the identity in a signed
// userinfo, client_secret_post), generic (openid profile email, no acr, the identity in the id_token, issuer with a
// trailing slash, client_secret_basic), and FranceConnect+-like (id_token and userinfo signed then encrypted to
// the broker's keys, acr eidas2). Only the login page is ours (oidc-provider's own is for development only): it
// lists the synthetic citizens, as the sandbox OP does, with a cancel button that ends the interaction with
// access_denied through oidc-provider's API.
//
// stdin: {shape, host, trailing_slash, client: {client metadata}, citizens_file, signing_alg}
// stdout: {issuer} once listening; then it serves until terminated.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import Provider from 'oidc-provider';

const input = JSON.parse(await new Promise((resolve) => createInterface({ input: process.stdin }).once('line', resolve)));
const citizens = new Map(JSON.parse(readFileSync(input.citizens_file, 'utf8')).citizens.map((c) => [c.id, c]));
const PIVOT = ['given_name', 'family_name', 'birthdate', 'gender', 'birthplace', 'birthcountry'];

function signingKey(alg) {
  const { privateKey } = alg === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid: `op-${randomBytes(4).toString('hex')}`, alg, use: 'sig' };
}

// What the OP knows of a citizen, under the claim names of its shape.
function claimsOf(citizen) {
  const pivot = citizen.pivot_identity;
  const common = { email: `${citizen.id}@fictif.invalid` };
  if (input.shape === 'generic') {
    // standard OpenID Connect names where there is one; the birth place and country under this OP's own names
    return { ...common, given_name: pivot.given_name, family_name: pivot.family_name, birthdate: pivot.birthdate,
      gender: pivot.gender, place_of_birth: pivot.birthplace, country_of_birth: pivot.birthcountry };
  }
  return { ...common, ...Object.fromEntries(PIVOT.map((n) => [n, pivot[n] ?? ''])), preferred_name: '' };
}

const scopeClaims = input.shape === 'generic'
  ? { profile: ['given_name', 'family_name', 'birthdate', 'gender', 'place_of_birth', 'country_of_birth'],
      email: ['email'] }
  // FranceConnect: each claim is its own scope
  : Object.fromEntries([...PIVOT, 'preferred_name', 'email'].map((n) => [n, [n]]));

const server = createServer();
await new Promise((resolve) => server.listen(0, input.host, resolve));
const issuer = `http://${input.host}:${server.address().port}${input.trailing_slash ? '/' : ''}`;

const provider = new Provider(issuer, {
  clients: [input.client],
  jwks: { keys: [signingKey(input.signing_alg)] },
  claims: { openid: ['sub'], ...scopeClaims },
  scopes: ['openid', ...Object.keys(scopeClaims)],
  acrValues: input.shape === 'generic' ? [] : ['eidas1', 'eidas2', 'eidas3'],
  conformIdTokenClaims: input.shape !== 'generic', // generic: the identity travels in the id_token
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: false },
    encryption: { enabled: input.shape === 'franceconnect-plus' },
    jwtUserinfo: { enabled: input.shape !== 'generic' },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(ctx, id) {
    const citizen = citizens.get(id);
    return citizen && { accountId: id, async claims() { return { sub: id, ...claimsOf(citizen) }; } };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!doctype html><html lang="fr"><title>Erreur</title><h1>${out.error}</h1><p>${out.error_description ?? ''}</p></html>`;
  },
});

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString()));
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params } = details;
  if (req.method === 'POST') {
    const form = await body(req);
    if (form.decision !== 'accept' || !citizens.has(form.citizen)) {
      return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
    }
    const acr = input.shape === 'generic' ? undefined : input.shape === 'franceconnect-plus' ? 'eidas2' : 'eidas1';
    return provider.interactionFinished(req, res, { login: { accountId: form.citizen, ...(acr && { acr }) } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name === 'consent') {
    // the citizen agreed to share these claims with the broker when registering at this OP: no second screen
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    grant.addOIDCScope(params.scope);
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
  }
  const choices = [...citizens.values()].map((c) => `<div><input type="radio" name="citizen" id="c-${escape(c.id)}" value="${escape(c.id)}" required>
<label for="c-${escape(c.id)}">${escape(c.pivot_identity.given_name)} ${escape(c.pivot_identity.family_name)}</label></div>`).join('\n');
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.end(`<!doctype html><html lang="fr"><head><title>Connexion</title></head><body><main>
<h1>Se connecter</h1>
<form method="post" action="/interaction/${escape(uid)}">
<fieldset><legend>Personnes fictives</legend>
${choices}
</fieldset>
<button type="submit" name="decision" value="accept">Se connecter</button>
<button type="submit" name="decision" value="cancel" formnovalidate>Annuler</button>
</form></main></body></html>`);
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((e) => { res.statusCode = 500; res.end(String(e)); });
  } else {
    callback(req, res);
  }
});
console.log(JSON.stringify({ issuer }));
