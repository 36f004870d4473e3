// A job's Server-Sent Events (GET /jobs/<id>/events), read with fetch() rather than
// EventSource: EventSource cannot send the Authorization header a server with an API key
// needs. The caller decides what a dropped or refused stream means (reconnect, or poll).

/**
 * Read the event stream at `url`, calling onEvent(name, data) for each event (data parsed
 * from JSON). Resolves once the stream is over, with what happened:
 *   {outcome: "finished"}  a `finished` event arrived (the stream then ends)
 *   {outcome: "refused", status}  the server answered an error (503: too many streams)
 *   {outcome: "dropped", events}  the connection failed or ended before `finished`
 *   {outcome: "closed"}  `signal` aborted it
 */
export async function readEvents(url, headers, onEvent, signal) {
  let response;
  try {
    response = await fetch(url, { headers, signal, cache: "no-store" });
  } catch (_) {
    return { outcome: signal.aborted ? "closed" : "dropped", events: 0 };
  }
  if (!response.ok || !response.body) return { outcome: "refused", status: response.status };
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let events = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseBlock(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (!event) continue;  // a comment (heartbeat) or a `retry:` line
        events += 1;
        onEvent(event.name, event.data);
        if (event.name === "finished") {
          reader.cancel().catch(() => {});
          return { outcome: "finished" };
        }
      }
    }
  } catch (_) { /* the connection broke: dropped */ }
  return { outcome: signal.aborted ? "closed" : "dropped", events };
}

/** One block of lines: {name, data} when it carries data, else null. */
function parseBlock(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { name, data: JSON.parse(data.join("\n")) };
  } catch (_) {
    return null;
  }
}
