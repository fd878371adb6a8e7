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
import { createHmac } from "node:crypto";
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

// twilioParams is a form body as Twilio's library takes it: a repeated
// name's values as an array.
function twilioParams(body) {
  const params = {};
  for (const [k, v] of new URLSearchParams(body)) {
    params[k] = k in params ? [].concat(params[k], v) : v;
  }
  return params;
}

async function sign({ scheme, secret, body, id, timestamp, url }) {
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
  out.push(process.argv[2] === "verify-standard" ? verifyStandard(item) : await sign(item));
}
process.stdout.write(JSON.stringify(out));
