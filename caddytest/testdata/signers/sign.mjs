// sign.mjs signs webhook requests the way each provider does, with the
// provider's own library where it ships a signer and with node's crypto,
// following the provider's documentation, where it does not. The relay's
// signature tests run it; it is not part of the relay.
//
// Input (stdin, JSON): a list of {"scheme", "secret", "body", "id",
// "timestamp"}, timestamp in seconds since 1970; for twilio also "url", the
// full URL Twilio calls (with bodySHA256 in its query for a JSON body). Output (stdout, JSON): for
// each, the headers to send, {"Name": "value", ...}. One run signs a whole
// test's requests, as node takes a while to start.
//
// With the argument "verify-standard", it instead reads a list of
// {"secret", "body", "headers"} and verifies each as a Standard Webhooks
// signature, printing for each {"ok": true} or {"ok": false, "error"}.
//
// The schemes that sign with a key pair (discord, sendgrid, fal) take as
// "secret" a private key, PKCS#8 DER in base64, which the argument
// "keypair" makes: it reads a list of {"scheme"} and prints for each
// {"private", "public"}, the public key as the provider shows it (Discord:
// hex; SendGrid: base64 DER; fal: the JWK's x, base64url). Their
// signatures are made with node's crypto as the providers document them,
// and for Discord and SendGrid checked with the provider's own library
// before they are printed: sign.mjs fails if the library refuses one.
// fal's also take "user", the X-Fal-Webhook-User-Id.
import { createHash, createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, sign as cryptoSign } from "node:crypto";
import { verifyKey as discordVerifyKey } from "discord-interactions";
import sendgridEventWebhook from "@sendgrid/eventwebhook";
import { Webhook as StandardWebhook } from "standardwebhooks";
import { Webhook as SvixWebhook } from "svix";
import Stripe from "stripe";
import { sign as githubSign } from "@octokit/webhooks-methods";
import twilio from "twilio";

const input = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (c) => (data += c));
  process.stdin.on("end", () => resolve(data));
}));

const hmacHex = (secret, content) => createHmac("sha256", secret).update(content).digest("hex");

const privateKey = (secret) => createPrivateKey({ key: Buffer.from(secret, "base64"), format: "der", type: "pkcs8" });

// keypair makes a key pair for scheme, the public key as the provider
// shows it.
function keypair({ scheme }) {
  const { publicKey, privateKey } = scheme === "sendgrid"
    ? generateKeyPairSync("ec", { namedCurve: "prime256v1" })
    : generateKeyPairSync("ed25519");
  const priv = privateKey.export({ format: "der", type: "pkcs8" }).toString("base64");
  switch (scheme) {
    case "discord": // the Developer Portal's "Public Key": 32 bytes, hex
      return { private: priv, public: Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url").toString("hex") };
    case "sendgrid": // the verification key: SubjectPublicKeyInfo DER, base64
      return { private: priv, public: publicKey.export({ format: "der", type: "spki" }).toString("base64") };
    case "fal": // as in fal's JWKS
      return { private: priv, public: publicKey.export({ format: "jwk" }).x };
  }
  throw new Error(`no key pair for scheme ${scheme}`);
}

// publicOf is the provider's form of the public key of a private one.
function publicOf(scheme, secret) {
  const pub = createPublicKey(privateKey(secret));
  return scheme === "sendgrid"
    ? pub.export({ format: "der", type: "spki" }).toString("base64")
    : Buffer.from(pub.export({ format: "jwk" }).x, "base64url").toString("hex");
}

// twilioParams is a form body as Twilio's library takes it: a repeated
// name's values as an array.
function twilioParams(body) {
  const params = {};
  for (const [k, v] of new URLSearchParams(body)) {
    params[k] = k in params ? [].concat(params[k], v) : v;
  }
  return params;
}

async function sign({ scheme, secret, body, id, timestamp, user, url }) {
  const when = new Date(timestamp * 1000);
  switch (scheme) {
    case "standard_webhooks":
      return {
        "webhook-id": id,
        "webhook-timestamp": String(timestamp),
        "webhook-signature": new StandardWebhook(secret).sign(id, when, body),
      };
    case "svix":
      return {
        "svix-id": id,
        "svix-timestamp": String(timestamp),
        "svix-signature": new SvixWebhook(secret).sign(id, when, body),
      };
    case "stripe":
      return {
        "Stripe-Signature": new Stripe("sk_test_unused").webhooks.generateTestHeaderString({ payload: body, secret, timestamp }),
      };
    case "github":
      return { "X-Hub-Signature-256": await githubSign(secret, body), "X-GitHub-Delivery": id, "X-GitHub-Event": "push" };
    case "shopify": // base64 HMAC-SHA256 of the raw body
      return {
        "X-Shopify-Hmac-Sha256": createHmac("sha256", secret).update(body).digest("base64"),
        "X-Shopify-Webhook-Id": id,
        "X-Shopify-Topic": "orders/create",
      };
    case "slack": // v0=hex HMAC-SHA256 of "v0:timestamp:body"
      return {
        "X-Slack-Request-Timestamp": String(timestamp),
        "X-Slack-Signature": "v0=" + hmacHex(secret, `v0:${timestamp}:${body}`),
      };
    case "paddle": // ts=...;h1=hex HMAC-SHA256 of "timestamp:body"
      return { "Paddle-Signature": `ts=${timestamp};h1=${hmacHex(secret, `${timestamp}:${body}`)}` };
    case "linear": // hex HMAC-SHA256 of the body, which carries webhookTimestamp
      return { "Linear-Signature": hmacHex(secret, body), "Linear-Delivery": id, "Linear-Event": "Issue" };
    case "discord": { // hex Ed25519 of timestamp + body
      const sig = cryptoSign(null, Buffer.from(`${timestamp}${body}`), privateKey(secret)).toString("hex");
      if (!(await discordVerifyKey(body, sig, String(timestamp), publicOf(scheme, secret)))) {
        throw new Error("discord-interactions' verifyKey refused the signature");
      }
      return { "X-Signature-Ed25519": sig, "X-Signature-Timestamp": String(timestamp) };
    }
    case "sendgrid": { // base64 DER ECDSA P-256 SHA-256 of timestamp + body
      const sig = cryptoSign("sha256", Buffer.from(`${timestamp}${body}`), privateKey(secret)).toString("base64");
      const ew = new sendgridEventWebhook.EventWebhook();
      if (!ew.verifySignature(ew.convertPublicKeyToECDSA(publicOf(scheme, secret)), body, sig, String(timestamp))) {
        throw new Error("@sendgrid/eventwebhook's verifySignature refused the signature");
      }
      return { "X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": String(timestamp) };
    }
    case "fal": { // hex Ed25519 of request id, user id, timestamp, hex SHA-256 of the body, joined by newlines
      const message = [id, user, String(timestamp), createHash("sha256").update(body).digest("hex")].join("\n");
      return {
        "X-Fal-Webhook-Request-Id": id,
        "X-Fal-Webhook-User-Id": user,
        "X-Fal-Webhook-Timestamp": String(timestamp),
        "X-Fal-Webhook-Signature": cryptoSign(null, Buffer.from(message), privateKey(secret)).toString("hex"),
      };
    }
    case "zoom": // v0=hex HMAC-SHA256 of "v0:timestamp:body" under the secret token
      return {
        "x-zm-request-timestamp": String(timestamp),
        "x-zm-signature": "v0=" + hmacHex(secret, `v0:${timestamp}:${body}`),
        "x-zm-trackingid": id,
      };
    case "meta": // sha256=hex HMAC-SHA256 of the body under the app secret
      return { "X-Hub-Signature-256": "sha256=" + hmacHex(secret, body) };
    case "twitter": // sha256=base64 HMAC-SHA256 of the body under the consumer secret
      return { "x-twitter-webhooks-signature": "sha256=" + createHmac("sha256", secret).update(body).digest("base64") };
    case "elevenlabs": // t=ts,v0=hex HMAC-SHA256 of "ts.body"
      return { "ElevenLabs-Signature": `t=${timestamp},v0=${hmacHex(secret, `${timestamp}.${body}`)}` };
    case "gitlab": // the secret token itself
      return {
        "X-Gitlab-Token": secret,
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Event-UUID": id,
        "X-Gitlab-Webhook-UUID": "wh-" + id,
        "X-Gitlab-Instance": "https://gitlab.example.com",
      };
    case "openai":
    case "replicate":
      return {
        "webhook-id": id,
        "webhook-timestamp": String(timestamp),
        "webhook-signature": new StandardWebhook(secret).sign(id, when, body),
      };
    case "clerk":
    case "resend":
      return {
        "svix-id": id,
        "svix-timestamp": String(timestamp),
        "svix-signature": new SvixWebhook(secret).sign(id, when, body),
      };
    case "twilio": {
      // A JSON body: Twilio puts its hash in the URL (bodySHA256) and signs
      // the URL alone; a form body: the URL and the sorted parameters.
      if (new URL(url).searchParams.has("bodySHA256")) {
        const signature = twilio.getExpectedTwilioSignature(secret, url, {});
        if (!twilio.validateRequestWithBody(secret, signature, url, body)) {
          throw new Error("twilio: the library refuses its own signature: the test's bodySHA256 is wrong");
        }
        return { "X-Twilio-Signature": signature, "Content-Type": "application/json" };
      }
      return {
        "X-Twilio-Signature": twilio.getExpectedTwilioSignature(secret, url, twilioParams(body)),
        "Content-Type": "application/x-www-form-urlencoded",
        "I-Twilio-Idempotency-Token": id,
      };
    }
  }
  throw new Error(`unknown scheme ${scheme}`);
}

function verifyStandard({ secret, body, headers }) {
  try {
    new StandardWebhook(secret).verify(body, headers);
    return { ok: true };
  } catch (e) {
    return { ok: false, error: String(e && e.message) };
  }
}

const out = [];
for (const item of input) {
  switch (process.argv[2]) {
    case "verify-standard":
      out.push(verifyStandard(item));
      break;
    case "keypair":
      out.push(keypair(item));
      break;
    default:
      out.push(await sign(item));
  }
}
process.stdout.write(JSON.stringify(out));
