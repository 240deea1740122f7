// « Inscription à l'accueil périscolaire »: a démarche in plain Node.js (no dependency) that pre-fills its form
// with the parent's consent through DLNUF, without any signature code: it sends the parent to the broker's consent
// screen, then posts plain HTTP to the consumer gateway, which holds the commune's key, signs, and verifies.
//
//   PORT=8082 BASE_URL=http://127.0.0.1:8082 BROKER_URL=http://127.0.0.1:8080 GATEWAY_URL=http://127.0.0.1:8090 \
//   SIRET=21130055300016 node examples/periscolaire/server.mjs
//
// HOST is the listen address (127.0.0.1 by default); GATEWAY_SECRET, when set, is sent as DLNUF-Gateway-Secret (a
// gateway listening off loopback asks for it); PURPOSE names the habilitation's purpose
// (tarification-accueil-periscolaire by default).
// Visits are kept in memory, as a sketch: a real service keeps them in its own sessions.

import { createHash, randomBytes } from "node:crypto";
import { createServer } from "node:http";

const env = (name) => {
  const value = process.env[name];
  if (!value) { console.error(`${name} is missing`); process.exit(2); }
  return value.replace(/\/$/, "");
};
const PORT = Number(process.env.PORT || 8082);
const BASE_URL = env("BASE_URL");
const BROKER_URL = env("BROKER_URL");
const GATEWAY_URL = env("GATEWAY_URL");
const SIRET = env("SIRET");
const GATEWAY_SECRET = process.env.GATEWAY_SECRET || "";
const REDIRECT_URI = `${BASE_URL}/retour`;
const DATASET = "quotient_familial";
const PURPOSE = process.env.PURPOSE || "tarification-accueil-periscolaire";
const FIELDS = ["quotient_familial", "allocataires", "enfants"];
// The commune's hourly rates by quotient familial bracket (illustrative).
const RATES = [[400, "1,10"], [800, "1,90"], [1200, "2,70"], [Infinity, "3,50"]];

const visits = new Map();
const b64url = (bytes) => bytes.toString("base64url");
const escape = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function visit(req, res) {
  const id = /(?:^|;\s*)visite=([A-Za-z0-9_-]+)/.exec(req.headers.cookie || "")?.[1];
  if (id && visits.has(id)) return visits.get(id);
  const fresh = { id: b64url(randomBytes(24)), prefill: {} };
  visits.set(fresh.id, fresh);
  res.setHeader("Set-Cookie", `visite=${fresh.id}; HttpOnly; SameSite=Lax; Path=/`);
  return fresh;
}

function page(res, status, title, body) {
  res.writeHead(status, {
    "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'none'",
  });
  res.end(`<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>${escape(title)}</title></head>` +
          `<body><main><h1>${escape(title)}</h1>${body}</main></body></html>`);
}

function form(res, v) {
  const message = v.message; v.message = undefined;
  const d = v.prefill;
  const parent = (d.allocataires || [{}])[0];
  const qf = d.quotient_familial?.valeur ?? "";
  const rate = qf === "" ? null : RATES.find(([upper]) => qf <= upper)[1];
  const children = (d.enfants?.length ? d.enfants : [{}]).map((e, i) =>
    `<p><label for="enfant-${i + 1}">Enfant ${i + 1}</label> <input id="enfant-${i + 1}" name="enfant_${i + 1}" ` +
    `value="${escape([e.prenoms, e.nom_naissance].filter(Boolean).join(" "))}"></p>`).join("");
  page(res, 200, "Inscription à l'accueil périscolaire",
    (message ? `<p role="status"><strong>${escape(message)}</strong></p>` : "") +
    (qf === "" ? `<p>Gagnez du temps : <a href="/remplir">Remplir avec mes données</a> (demandées à la CAF ou à la ` +
                 `MSA avec votre accord, via DLNUF). Vous pouvez aussi remplir le formulaire vous-même.</p>` : "") +
    `<form method="post" action="/inscription">` +
    `<p><label for="nom">Nom</label> <input id="nom" name="nom" value="${escape(parent.nom_naissance)}"></p>` +
    `<p><label for="prenoms">Prénoms</label> <input id="prenoms" name="prenoms" value="${escape(parent.prenoms)}"></p>` +
    children +
    `<p><label for="qf">Quotient familial</label> <input id="qf" name="quotient_familial" inputmode="numeric" ` +
    `value="${escape(qf)}"></p>` +
    (rate ? `<p id="tarif">Tarif : <strong>${rate} €</strong> de l'heure.</p>` : "") +
    `<p><button type="submit">Envoyer l'inscription</button></p></form>`);
}

// The consent flow's first leg: PKCE (a SHA-256, not a signature) and the broker's authorization URL.
function connect(res, v) {
  v.state = b64url(randomBytes(16));
  v.verifier = b64url(randomBytes(48));
  const challenge = b64url(createHash("sha256").update(v.verifier).digest());
  const details = [{ type: "dlnuf_exchange", dataset: DATASET, purpose: PURPOSE, fields: FIELDS,
                     frequency: "one_time", duration_days: 1 }];
  const query = new URLSearchParams({ response_type: "code", client_id: SIRET, redirect_uri: REDIRECT_URI,
    state: v.state, code_challenge: challenge, code_challenge_method: "S256",
    authorization_details: JSON.stringify(details) });
  res.writeHead(302, { Location: `${BROKER_URL}/oauth/authorize?${query}` }).end();
}

// Everything below is plain HTTP to the gateway, which signs, verifies, and records.
async function gateway(path, body, headers) {
  const secret = GATEWAY_SECRET ? { "DLNUF-Gateway-Secret": GATEWAY_SECRET } : {};
  const resp = await fetch(`${GATEWAY_URL}${path}`, { method: "POST", body, headers: { ...headers, ...secret } });
  return { status: resp.status, json: await resp.json() };
}

async function back(res, v, params) {
  const { state, verifier } = v;
  v.state = v.verifier = undefined;
  if (!state || params.get("state") !== state) {
    v.message = "Le retour du service de partage n'a pas pu être vérifié. Remplissez le formulaire vous-même.";
  } else if (params.has("error")) {
    v.message = params.get("error") === "access_denied"
      ? "Vous n'avez pas autorisé le partage de vos données : remplissez le formulaire vous-même."
      : "Le partage de vos données n'a pas abouti.";
  } else {
    const token = await gateway("/oauth/token", new URLSearchParams({ grant_type: "authorization_code",
      code: params.get("code") || "", code_verifier: verifier, redirect_uri: REDIRECT_URI }),
      { "Content-Type": "application/x-www-form-urlencoded" });
    const granted = token.json.authorization_details?.[0]?.fields || FIELDS;
    const answer = token.status !== 200 ? token : await gateway("/v1/exchanges",
      JSON.stringify({ dataset: DATASET, purpose: PURPOSE, recipient: SIRET, fields: granted }),
      { "Content-Type": "application/json", Authorization: `Bearer ${token.json.access_token}` });
    if (answer.status === 200) {
      v.prefill = answer.json.data;
      v.message = "Formulaire pré-rempli avec les données de la CAF ou de la MSA. Vérifiez-les avant d'envoyer.";
    } else {
      // the broker's problem (or the gateway's), whose type says who refused and why
      v.message = `Le partage de vos données n'a pas abouti (${answer.json.type || answer.json.error}). ` +
                  "Remplissez le formulaire vous-même.";
    }
  }
  res.writeHead(302, { Location: "/" }).end();
}

createServer(async (req, res) => {
  const url = new URL(req.url, BASE_URL);
  const v = visit(req, res);
  try {
    if (req.method === "GET" && url.pathname === "/") return form(res, v);
    if (req.method === "GET" && url.pathname === "/remplir") return connect(res, v);
    if (req.method === "GET" && url.pathname === "/retour") return await back(res, v, url.searchParams);
    if (req.method === "POST" && url.pathname === "/inscription") {
      v.prefill = {};
      return page(res, 200, "Inscription envoyée", "<p>Votre demande d'inscription a bien été envoyée.</p>");
    }
    page(res, 404, "Page introuvable", "<p><a href=\"/\">Retour au formulaire</a></p>");
  } catch (err) {
    console.error(err);
    page(res, 502, "Service indisponible", "<p>Réessayez dans un instant.</p>");
  }
}).listen(PORT, process.env.HOST || "127.0.0.1", () => console.error(`périscolaire on ${BASE_URL}, gateway ${GATEWAY_URL}`));
