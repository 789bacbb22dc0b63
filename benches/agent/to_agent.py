"""Writes cedar-agent's input files for benches/load.sh: the policies as its JSON
list of {id, content}, and the demo entities with entity references escaped as
{"__entity": ...} (cedar-agent runs without a schema, so it cannot infer them)."""
import json
import re
import sys

policies_file, entities_file, out = sys.argv[1:4]
text = open(policies_file).read()
policies = []
for chunk in re.split(r"(?=@id\()", text):
    match = re.match(r'@id\("([^"]+)"\)', chunk)
    if match:
        policies.append({"id": match.group(1), "content": chunk.strip()})
json.dump(policies, open(f"{out}/agent-policies.json", "w"))


def escape(value):
    if isinstance(value, dict) and set(value) == {"type", "id"}:
        return {"__entity": value}
    if isinstance(value, dict):
        return {k: escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape(v) for v in value]
    return value


entities = json.load(open(entities_file))
for entity in entities:
    entity["attrs"] = escape(entity.get("attrs", {}))
    entity.pop("tags", None)
json.dump(entities, open(f"{out}/agent-entities.json", "w"))
