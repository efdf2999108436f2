"use strict";
// Renders /openapi.json: every operation with its fields, responses and a curl example.

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// A paragraph of the schema's text, with `quoted` words as code (as text nodes, never HTML).
function prose(text, className) {
  const node = element("p", undefined, className);
  text.split("`").forEach((part, i) => node.appendChild(i % 2 ? element("code", part) : document.createTextNode(part)));
  return node;
}

function resolve(schema, spec) {
  if (schema && schema.$ref) {
    return schema.$ref.split("/").slice(1).reduce((node, key) => node[key], spec);
  }
  return schema || {};
}

function fieldsTable(schema, spec) {
  const table = element("table");
  const head = table.createTHead().insertRow();
  ["field", "type", "required", "description"].forEach((name) => head.appendChild(element("th", name)));
  const body = table.createTBody();
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const field = resolve(raw, spec);
    const row = body.insertRow();
    const type = field.format === "binary" ? "file" : field.type || (field.anyOf ? "any of" : "object");
    [name, type, required.has(name) ? "yes" : "no", field.description || field.title || ""].forEach(
      (value) => row.appendChild(element("td", value)));
  }
  return table;
}

function curl(method, path, schema) {
  const url = `${location.origin}${path}`;
  if (method !== "post") return `curl ${url}`;
  const fields = Object.entries(schema.properties || {}).map(([name, field]) =>
    field.format === "binary" ? `-F ${name}=@clip.mp4` : `-F ${name}='...'`);
  return `curl ${fields.join(" ")} ${url}`;
}

async function render() {
  const main = document.getElementById("operations");
  const response = await fetch("/openapi.json");
  if (!response.ok) {
    main.textContent = `Could not read the schema (${response.status})`;
    return;
  }
  const spec = await response.json();
  main.replaceChildren(element("p", `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`));
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const section = element("section", undefined, "operation");
      section.appendChild(element("h2", `${method.toUpperCase()} ${path}`));
      if (op.summary) section.appendChild(prose(op.summary));
      if (op.description) section.appendChild(prose(op.description, "muted"));
      let schema = {};
      const content = op.requestBody && op.requestBody.content;
      if (content) {
        const [type, media] = Object.entries(content)[0];
        schema = resolve(media.schema, spec);
        section.appendChild(element("h3", `Request body (${type})`));
        section.appendChild(fieldsTable(schema, spec));
      }
      section.appendChild(element("h3", "Responses"));
      const list = element("ul");
      for (const [status, answer] of Object.entries(op.responses || {})) {
        const media = answer.content && answer.content["application/json"];
        const fields = media ? Object.keys(resolve(media.schema, spec).properties || {}) : [];
        list.appendChild(element("li", `${status}: ${answer.description}` +
          (fields.length ? ` (${fields.join(", ")})` : "")));
      }
      section.appendChild(list);
      section.appendChild(element("pre", curl(method, path, schema)));
      main.appendChild(section);
    }
  }
}

document.addEventListener("DOMContentLoaded", render);
