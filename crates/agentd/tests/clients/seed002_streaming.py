# Seed 002's "Python / Streaming (SSE)" example, changed only in URL and key.
import os
import requests
import json

url = os.environ["AGENTD_URL"] + "/api/chat"
headers = {
    "Authorization": "Bearer " + os.environ["AGENTD_KEY"],
    "Content-Type": "application/json"
}

response = requests.post(url, headers=headers, json={
    "message": "Tell me a story",
    "stream": True
}, stream=True)

for line in response.iter_lines():
    if line:
        line = line.decode('utf-8')
        if line.startswith('data: '):
            data_str = line[6:]  # Remove 'data: ' prefix
            if data_str == '[DONE]':
                break
            
            event = json.loads(data_str)
            if event['type'] == 'token':
                print(event['data'], end='', flush=True)
            elif event['type'] == 'done':
                print(f"\n\nComplete: {event['data']}")
