/*
 * "Vérifier": checks, in the citizen's browser, that a journal entry is in the broker's public transparency log.
 *
 * The page gives raw materials only, never a verdict: the entry as the server canonicalised it (RFC 8785 JCS), its
 * leaf index and RFC 9162 inclusion proof, the signed checkpoint (C2SP signed note) and the log's verifier key. This
 * file recomputes everything with WebCrypto:
 *
 *   1. parse the entry and canonicalise it again here; the result must be the server's bytes exactly;
 *   2. leaf hash = SHA-256(0x00 || canonical bytes) (RFC 9162 §2.1.1);
 *   3. parse the verifier key "<name>+<key id hex>+<base64(0x01 || Ed25519 public key)>" and check that its key id
 *      is the first 4 bytes of SHA-256(name || "\n" || 0x01 || key) (C2SP signed-note);
 *   4. open the checkpoint: a signature line by that key name and key id must verify (Ed25519) over the note text,
 *      and no signature by that key may fail; the text is "<origin>\n<size>\n<base64 root>\n[extensions]";
 *   5. the checkpoint's origin is the log's, its size is the tree size of the proof;
 *   6. the inclusion proof (RFC 9162 §2.1.3.2) leads from the leaf hash at its index to the checkpoint's root.
 *
 * Each refusal names the step that failed, in French, for the citizen. Nothing here trusts the server's word but
 * the verifier key, which the page shows so that it can be compared with the key published out of band; this
 * browser also remembers the key it first verified with and says so if it ever changes (trust on first use).
 */
(function () {
  "use strict";

  class VerifyError extends Error {
    constructor(step, message) {
      super(message);
      this.step = step;
    }
  }

  const utf8 = new TextEncoder();

  function fromBase64(text, what) {
    let binary;
    try {
      binary = atob(text);
    } catch (e) {
      throw new VerifyError("format", what + " n'est pas en base64.");
    }
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    // canonical base64 only, as the server's checkpoint parser: nothing may hide in padding bits
    if (toBase64(bytes) !== text) throw new VerifyError("format", what + " n'est pas en base64 canonique.");
    return bytes;
  }

  function toBase64(bytes) {
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  /* RFC 8785. ECMAScript is the reference of JCS: JSON.stringify spells strings and numbers exactly as JCS does,
   * and the default sort compares UTF-16 code units, which is JCS's order of object members. */
  function canonicalize(value) {
    if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
    if (typeof value === "number") {
      if (!Number.isFinite(value)) throw new VerifyError("canonical", "un nombre n'est pas représentable en JSON.");
      return JSON.stringify(value);
    }
    if (Array.isArray(value)) return "[" + value.map(canonicalize).join(",") + "]";
    if (typeof value === "object") {
      const keys = Object.keys(value).sort();
      return "{" + keys.map((k) => JSON.stringify(k) + ":" + canonicalize(value[k])).join(",") + "}";
    }
    throw new VerifyError("canonical", "une valeur n'est pas du JSON.");
  }

  async function leafHash(canonicalBytes) {
    return sha256(concat(new Uint8Array([0]), canonicalBytes));
  }

  function hex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /* The bytes the tree hashes for an entry (docs/transparency-log.md): v1, the entry's canonical form; v2, its
   * public leaf, which holds the hex SHA-256 of that form with the entry's id, time, legal basis and retention. */
  async function leafData(entry, canonical) {
    if (entry.v === 1) return utf8.encode(canonical);
    if (entry.v !== 2) throw new VerifyError("canonical", "l'entrée n'est pas d'un format connu.");
    const digest = hex(await sha256(utf8.encode(canonical)));
    return utf8.encode(canonicalize({ entry: digest, id: entry.id, legal_basis_type: entry.legal_basis_type,
      logged_at: entry.logged_at, retention: entry.retention, v: 2 }));
  }

  /* C2SP tlog-cosignature, Ed25519 (type 0x04): a witness key `<name>+<key id>+base64(0x04 || key)`. */
  async function parseWitnessKey(vkey) {
    const first = vkey.indexOf("+");
    const second = vkey.indexOf("+", first + 1);
    if (first <= 0 || second < 0) throw new VerifyError("witness", "une clé de témoin n'est pas au format attendu.");
    const name = vkey.slice(0, first);
    const typed = fromBase64(vkey.slice(second + 1), "Une clé de témoin");
    if (typed.length !== 33 || typed[0] !== 4) throw new VerifyError("witness", "une clé de témoin n'est pas une clé de cosignature Ed25519.");
    const keyId = (await sha256(concat(utf8.encode(name + "\n"), typed))).slice(0, 4);
    if (hex(keyId) !== vkey.slice(first + 1, second).toLowerCase()) {
      throw new VerifyError("witness", "l'identifiant d'une clé de témoin ne correspond pas à la clé.");
    }
    let key;
    try {
      key = await crypto.subtle.importKey("raw", typed.slice(1), { name: "Ed25519" }, false, ["verify"]);
    } catch (e) {
      throw new VerifyError("browser", "ce navigateur ne sait pas vérifier les signatures Ed25519.");
    }
    return { name, keyId, key };
  }

  /* How many of `witnesses` cosigned the checkpoint `note`; a known witness's line that fails condemns it. */
  async function countCosignatures(note, witnesses) {
    const split = note.lastIndexOf("\n\n");
    const text = note.slice(0, split + 1);
    const found = new Set();
    for (const line of note.slice(split + 2, -1).split("\n")) {
      const [name, b64] = line.slice(2).split(" ");
      const raw = fromBase64(b64, "Une signature");
      const w = witnesses.find((k) => k.name === name && equal(raw.slice(0, 4), k.keyId));
      if (!w) continue;
      if (raw.length !== 4 + 8 + 64) throw new VerifyError("witness", "une cosignature de témoin est mal formée.");
      const time = new DataView(raw.buffer, raw.byteOffset + 4, 8).getBigUint64(0);
      const message = utf8.encode("cosignature/v1\ntime " + time.toString() + "\n" + text);
      if (!await crypto.subtle.verify("Ed25519", w.key, raw.slice(12), message)) {
        throw new VerifyError("witness", "la cosignature du témoin " + name + " est invalide.");
      }
      found.add(w.name + "+" + hex(w.keyId));
    }
    return found.size;
  }

  async function nodeHash(left, right) {
    return sha256(concat(new Uint8Array([1]), left, right));
  }

  /* RFC 9162 §2.1.3.2: the root the proof leads to from `leaf` at `index` in a tree of `size` leaves. */
  async function rootFromInclusionProof(leaf, index, size, proof) {
    if (!(index >= 0n && index < size)) throw new VerifyError("proof", "l'entrée n'est pas une feuille de cet arbre.");
    if (leaf.length !== 32) throw new VerifyError("proof", "l'empreinte de l'entrée n'a pas la bonne taille.");
    let fn = index;
    let sn = size - 1n;
    let r = leaf;
    for (const p of proof) {
      if (p.length !== 32) throw new VerifyError("proof", "la preuve contient un condensat de mauvaise taille.");
      if (sn === 0n) throw new VerifyError("proof", "la preuve est trop longue pour cet arbre.");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await nodeHash(p, r);
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) throw new VerifyError("proof", "la preuve est trop courte pour cet arbre.");
    return r;
  }

  async function parseVerifierKey(vkey) {
    const first = vkey.indexOf("+");
    const second = vkey.indexOf("+", first + 1);
    if (first <= 0 || second < 0) throw new VerifyError("key", "la clé du journal n'est pas au format attendu.");
    const name = vkey.slice(0, first);
    const idHex = vkey.slice(first + 1, second);
    if (!/^[0-9a-f]{8}$/i.test(idHex)) throw new VerifyError("key", "l'identifiant de la clé du journal est invalide.");
    const typed = fromBase64(vkey.slice(second + 1), "La clé du journal");
    if (typed.length !== 33 || typed[0] !== 1) throw new VerifyError("key", "la clé du journal n'est pas une clé Ed25519.");
    const digest = await sha256(concat(utf8.encode(name + "\n"), typed));
    const keyId = digest.slice(0, 4);
    const declared = Uint8Array.from(idHex.match(/../g), (h) => parseInt(h, 16));
    if (!equal(keyId, declared)) throw new VerifyError("key", "l'identifiant de la clé du journal ne correspond pas à la clé.");
    let key;
    try {
      key = await crypto.subtle.importKey("raw", typed.slice(1), { name: "Ed25519" }, false, ["verify"]);
    } catch (e) {
      throw new VerifyError("browser", "ce navigateur ne sait pas vérifier les signatures Ed25519.");
    }
    return { name, keyId, key };
  }

  /* C2SP signed note + tlog-checkpoint; returns {origin, size, root} once a signature by `verifier` holds. */
  async function openCheckpoint(note, verifier) {
    const split = note.lastIndexOf("\n\n");
    if (split < 0 || !note.endsWith("\n")) throw new VerifyError("checkpoint", "le point de contrôle n'est pas une note signée.");
    const text = note.slice(0, split + 1);
    const lines = note.slice(split + 2, -1).split("\n");
    let verified = false;
    for (const line of lines) {
      if (!line.startsWith("\u2014 ")) throw new VerifyError("checkpoint", "une ligne de signature est mal formée.");
      const [name, b64, ...rest] = line.slice(2).split(" ");
      if (rest.length || !b64) throw new VerifyError("checkpoint", "une ligne de signature est mal formée.");
      if (name !== verifier.name) continue; // another key's signature (a witness): not ours to judge
      const raw = fromBase64(b64, "Une signature");
      if (raw.length < 5) throw new VerifyError("checkpoint", "une ligne de signature est mal formée.");
      if (!equal(raw.slice(0, 4), verifier.keyId)) continue; // same name, another key: a rotated one, not ours
      const ok = raw.length === 68 &&
        await crypto.subtle.verify("Ed25519", verifier.key, raw.slice(4), utf8.encode(text));
      if (!ok) throw new VerifyError("signature", "la signature du point de contrôle est invalide : il n'a pas été signé par la clé du journal.");
      verified = true;
    }
    if (!verified) throw new VerifyError("signature", "le point de contrôle ne porte pas de signature de la clé du journal.");
    const body = text.slice(0, -1).split("\n");
    if (body.length < 3 || !/^(0|[1-9][0-9]*)$/.test(body[1])) {
      throw new VerifyError("checkpoint", "le point de contrôle signé n'a pas le format attendu.");
    }
    const root = fromBase64(body[2], "La racine de l'arbre");
    if (root.length !== 32) throw new VerifyError("checkpoint", "la racine de l'arbre n'a pas la bonne taille.");
    return { origin: body[0], size: BigInt(body[1]), root };
  }

  /* The whole verification of one entry; resolves to what was established, or rejects with a VerifyError. */
  async function verifyEntry(m) {
    if (!window.crypto || !crypto.subtle) {
      throw new VerifyError("browser", "ce navigateur ne permet pas la vérification (WebCrypto indisponible ; la page doit être servie en HTTPS).");
    }
    // 1. canonical bytes, recomputed here
    let entry;
    try {
      entry = JSON.parse(m.canonical);
    } catch (e) {
      throw new VerifyError("canonical", "l'entrée n'est pas du JSON.");
    }
    const canonical = canonicalize(entry);
    if (canonical !== m.canonical) throw new VerifyError("canonical", "l'entrée fournie n'est pas sous sa forme canonique (RFC 8785).");
    // 2. leaf hash (of the entry, or of its public leaf)
    const leaf = await leafHash(await leafData(entry, canonical));
    if (m.index === null || m.index === undefined || m.index === "") {
      throw new VerifyError("pending", "l'entrée n'est pas encore intégrée au journal public ; réessayez dans une minute.");
    }
    // 3. the log's key; 4. the signed checkpoint
    const verifier = await parseVerifierKey(m.verifierKey);
    const checkpoint = await openCheckpoint(m.checkpoint, verifier);
    // 5. the right log, the right tree
    if (checkpoint.origin !== m.origin || verifier.name !== m.origin) {
      throw new VerifyError("checkpoint", "le point de contrôle est celui d'un autre journal.");
    }
    const size = BigInt(m.treeSize);
    if (checkpoint.size !== size) throw new VerifyError("checkpoint", "la preuve ne porte pas sur l'arbre du point de contrôle.");
    // 5b. enough witnesses cosigned it: k of n
    const witnessKeys = (m.witnesses || "").split(" ").filter((k) => k);
    const quorum = Number(m.quorum || 0);
    if (quorum > witnessKeys.length) throw new VerifyError("witness", "le nombre de témoins requis dépasse celui des témoins connus.");
    if (quorum > 0) {
      const witnesses = await Promise.all(witnessKeys.map(parseWitnessKey));
      const count = await countCosignatures(m.checkpoint, witnesses);
      if (count < quorum) {
        throw new VerifyError("witness", `le point de contrôle n'est cosigné que par ${count} des ${quorum} témoins requis.`);
      }
    }
    // 6. the proof reaches the signed root
    const proof = (m.proof || []).map((p) => fromBase64(p, "Un condensat de la preuve"));
    const root = await rootFromInclusionProof(leaf, BigInt(m.index), size, proof);
    if (!equal(root, checkpoint.root)) {
      throw new VerifyError("proof", "cette entrée ne mène pas à la racine signée : elle n'est pas celle que le journal public contient.");
    }
    return { entry, leafHash: toBase64(leaf), index: BigInt(m.index), size, root: toBase64(checkpoint.root) };
  }

  /* ---------------------------------------------------------------------------------------------- the page */

  const KEY_MEMORY = "dlnuf-log-verifier-key:";
  const OUTCOMES = { released: "données transmises", refused: "refusé", failed: "échec" };

  function remembered(origin, vkey) {
    // Trust on first use: a key that changes between two visits is worth telling the citizen about.
    try {
      const before = localStorage.getItem(KEY_MEMORY + origin);
      if (before === null) localStorage.setItem(KEY_MEMORY + origin, vkey);
      return before === null || before === vkey;
    } catch (e) {
      return true; // storage disabled: nothing to compare with
    }
  }

  /* The verdict is one compact line in the row's status; what was established, or the step that failed, goes
   * behind a disclosure beside it (`<details id="<status id>-details">`), so a journal of many rows stays readable. */
  function say(output, ok, title, detail) {
    output.replaceChildren();
    output.classList.remove("verify-ok", "verify-ko");
    output.classList.add(ok ? "verify-ok" : "verify-ko");
    const strong = document.createElement("strong");
    strong.textContent = title;
    output.append(strong);
    const details = document.getElementById(output.id + "-details");
    if (details) {
      details.querySelector("[data-verify-detail]").textContent = detail || "";
      details.hidden = !detail;
    } else if (detail) {
      output.append(document.createElement("br"), document.createTextNode(detail));
    }
  }

  function formatDate(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString("fr-FR", { timeZone: "Europe/Paris" });
  }

  async function onVerify(button, log) {
    const output = document.getElementById(button.getAttribute("aria-controls"));
    output.textContent = "Vérification en cours…";
    output.classList.remove("verify-ok", "verify-ko");
    const details = document.getElementById(output.id + "-details");
    if (details) details.hidden = true;
    const materials = {
      canonical: button.dataset.entry,
      index: button.dataset.index,
      treeSize: log.dataset.treeSize,
      proof: button.dataset.proof ? button.dataset.proof.split(" ") : [],
      checkpoint: log.dataset.checkpoint,
      verifierKey: log.dataset.verifierKey,
      origin: log.dataset.origin,
      witnesses: log.dataset.witnesses,
      quorum: log.dataset.witnessQuorum,
    };
    try {
      const r = await verifyEntry(materials);
      const e = r.entry;
      say(output, true, "Vérifiée : cette entrée figure dans le journal public.",
        `Entrée n° ${r.index} d'un journal de ${r.size} entrées, dont le sommet est signé par la clé du journal ` +
        `${log.dataset.origin}. Elle dit : le ${formatDate(e.logged_at)}, ` +
        `${e.consumer ? "SIRET " + e.consumer : "aucune administration"}, données « ${e.dataset || "inconnues"} », ` +
        `${e.recipient === "citoyen" && e.purpose === "apercu-consentement" ? "montrées à vous seul·e"
          : OUTCOMES[e.outcome] || e.outcome}.` +
        (remembered(log.dataset.origin, materials.verifierKey) ? ""
          : " Attention : la clé du journal n'est pas celle que ce navigateur a vue lors d'une vérification précédente."));
    } catch (err) {
      const reason = err instanceof VerifyError ? err.message : "erreur inattendue (" + err + ").";
      const pending = err instanceof VerifyError && err.step === "pending";
      say(output, false, pending ? "Pas encore dans le journal public."
        : "Échec : cette entrée n'est pas prouvée dans le journal public.", reason);
    }
  }

  function enhance() {
    const log = document.getElementById("journal-verification");
    if (!log) return;
    for (const button of document.querySelectorAll("button[data-verify]")) {
      button.hidden = false;
      button.addEventListener("click", () => onVerify(button, log));
    }
    for (const note of document.querySelectorAll("[data-needs-js]")) note.hidden = true;
  }

  window.dlnufVerify = { VerifyError, canonicalize, verifyEntry, rootFromInclusionProof, openCheckpoint, parseVerifierKey };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", enhance);
  else enhance();
})();
