// A consumer administration's Node.js démarche on panva's openid-client (certified), unmodified and with its
// defaults: discovery from the broker's issuer URL, private_key_jwt with the organisation key, PKCE S256,
// authorization_details, PAR when asked, the code grant (with its RFC 9207 iss check), then a refresh.
// TLS is verified against the test CA given in NODE_EXTRA_CA_CERTS, as Node does for any private CA.
//
// stdin, one JSON line each:
//   {issuer, client_id, jwk (private, with kid), redirect_uri, authorization_details, par: bool}
//   {callback_url}          the URL the browser came back to
//   {refresh: true}         or {done: true}
// stdout, one JSON line each: {authorization_url, state}, then the token response, then the refreshed one;
// an error is {error, name, code?, status?, body?} and ends the script.
import { createInterface } from 'node:readline';
import * as client from 'openid-client';

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => JSON.parse((await lines.next()).value);
const say = (message) => console.log(JSON.stringify(message));

try {
  const input = await next();
  const { kid, ...jwk } = input.jwk;
  const algorithm = jwk.kty === 'OKP' ? { name: 'Ed25519' } : { name: 'ECDSA', namedCurve: 'P-256' };
  const key = await crypto.subtle.importKey('jwk', jwk, algorithm, false, ['sign']);
  const config = await client.discovery(new URL(input.issuer), input.client_id, {},
    client.PrivateKeyJwt({ key, kid }));

  const codeVerifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const parameters = {
    redirect_uri: input.redirect_uri,
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    authorization_details: JSON.stringify(input.authorization_details),
  };
  const url = input.par
    ? await client.buildAuthorizationUrlWithPAR(config, parameters)
    : client.buildAuthorizationUrl(config, parameters);
  say({ authorization_url: url.href, state });

  const { callback_url: callbackUrl } = await next();
  const tokens = await client.authorizationCodeGrant(config, new URL(callbackUrl),
    { pkceCodeVerifier: codeVerifier, expectedState: state });
  say(tokens);

  if ((await next()).refresh) {
    say(await client.refreshTokenGrant(config, tokens.refresh_token));
  }
} catch (e) {
  say({ error: e.message, name: e.name, code: e.code, status: e.status, body: e.error ?? e.cause?.body });
}
