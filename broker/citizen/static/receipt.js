/*
 * The receipt page (/citizen/consentements/{id}/recu): « Vérifier la signature » and « Imprimer ».
 *
 * The signed receipt is a compact JWS (typ dlnuf-consent-receipt+jwt) by the broker's key. This file fetches it and
 * the broker's published keys (/.well-known/jwks.json), and with WebCrypto only:
 *
 *   1. splits the JWS and reads its protected header: the receipt type, and the key id;
 *   2. finds that key among the published ones; its type fixes the algorithm (Ed25519: EdDSA, P-256: ES256), never
 *      the header alone;
 *   3. verifies the signature over "<header>.<payload>" (RFC 7515 §5.2);
 *   4. checks that the verified receipt names the consent this page shows (its id and the administration's SIRET).
 *
 * The verdict is one line; a failure says which step failed. What the key proves, and where to compare it, is the
 * same as for the journal (the key comes from this server: compare it with the one the operator publishes).
 */
(function () {
  "use strict";

  class ReceiptError extends Error {}

  const utf8 = new TextEncoder();

  function fromBase64url(text, what) {
    if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new ReceiptError(what + " n'est pas en base64url.");
    let b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  function json(bytes, what) {
    try {
      return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    } catch (e) {
      throw new ReceiptError(what + " n'est pas du JSON.");
    }
  }

  async function publicKey(jwk) {
    if (jwk.kty === "OKP" && jwk.crv === "Ed25519") {
      const key = await crypto.subtle.importKey("jwk", { kty: "OKP", crv: "Ed25519", x: jwk.x }, { name: "Ed25519" },
        false, ["verify"]);
      return { alg: "EdDSA", key, params: { name: "Ed25519" } };
    }
    if (jwk.kty === "EC" && jwk.crv === "P-256") {
      const key = await crypto.subtle.importKey("jwk", { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y },
        { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      return { alg: "ES256", key, params: { name: "ECDSA", hash: "SHA-256" } };
    }
    throw new ReceiptError("la clé du service est d'un type que cette page ne sait pas vérifier.");
  }

  /* Resolves to the receipt's verified claims, or rejects with a ReceiptError saying what failed. */
  async function verifyReceipt(jws, jwks) {
    if (!window.crypto || !crypto.subtle) throw new ReceiptError("ce navigateur ne permet pas la vérification.");
    // 1. the compact JWS and its header
    const parts = jws.trim().split(".");
    if (parts.length !== 3) throw new ReceiptError("ce n'est pas un reçu signé.");
    const header = json(fromBase64url(parts[0], "L'en-tête"), "L'en-tête");
    if (header.typ !== "dlnuf-consent-receipt+jwt") throw new ReceiptError("ce n'est pas un reçu de consentement.");
    // 2. the key, among those the service publishes
    const jwk = (jwks.keys || []).find((k) => k.kid === header.kid);
    if (!jwk) throw new ReceiptError("le reçu est signé par une clé que le service ne publie pas.");
    const key = await publicKey(jwk);
    if (header.alg !== key.alg) throw new ReceiptError("l'algorithme du reçu ne correspond pas à la clé.");
    // 3. the signature
    const ok = await crypto.subtle.verify(key.params, key.key, fromBase64url(parts[2], "La signature"),
      utf8.encode(parts[0] + "." + parts[1]));
    if (!ok) throw new ReceiptError("la signature ne correspond pas au contenu : le reçu a été modifié.");
    return { kid: header.kid, claims: json(fromBase64url(parts[1], "Le contenu"), "Le contenu") };
  }

  function say(output, ok, text) {
    output.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = text;
    output.append(strong);
    output.classList.remove("verify-ok", "verify-ko");
    output.classList.add(ok ? "verify-ok" : "verify-ko");
  }

  async function onVerify(button) {
    const output = document.getElementById(button.getAttribute("aria-controls"));
    const shown = document.getElementById("recu").dataset;
    output.textContent = "Vérification en cours…";
    output.classList.remove("verify-ok", "verify-ko");
    try {
      const [jws, jwks] = await Promise.all([
        fetch(button.dataset.receipt, { credentials: "same-origin" }).then((r) => {
          if (!r.ok) throw new ReceiptError("le reçu n'a pas pu être téléchargé.");
          return r.text();
        }),
        fetch(button.dataset.jwks).then((r) => {
          if (!r.ok) throw new ReceiptError("les clés du service n'ont pas pu être téléchargées.");
          return r.json();
        }),
      ]);
      const { kid, claims } = await verifyReceipt(jws, jwks);
      // 4. the receipt is this page's consent
      const controller = claims["dpv:hasDataController"] || {};
      if (claims.record_id !== shown.recordId || controller.siret !== shown.controller) {
        throw new ReceiptError("le reçu signé ne porte pas sur le consentement de cette page.");
      }
      say(output, true, `Signature vérifiée : ce reçu a été signé par la clé « ${kid} » du service, et porte sur ` +
        "ce consentement.");
    } catch (err) {
      const reason = err instanceof ReceiptError ? err.message : "erreur inattendue (" + err + ").";
      say(output, false, "Échec de la vérification : " + reason);
    }
  }

  function enhance() {
    const verify = document.getElementById("verifier-recu");
    if (verify) {
      verify.hidden = false;
      verify.addEventListener("click", () => onVerify(verify));
    }
    const print = document.getElementById("imprimer");
    if (print) {
      print.hidden = false;
      print.addEventListener("click", () => window.print());
    }
    for (const note of document.querySelectorAll("[data-needs-js]")) note.hidden = true;
  }

  window.dlnufReceipt = { ReceiptError, verifyReceipt };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", enhance);
  else enhance();
})();
