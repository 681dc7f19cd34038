# Seed 002's "Python / Non-Streaming" example, changed only in URL and key.
import os
import requests

url = os.environ["AGENTD_URL"] + "/api/chat"
headers = {
    "Authorization": "Bearer " + os.environ["AGENTD_KEY"],
    "Content-Type": "application/json"
}

response = requests.post(url, headers=headers, json={
    "message": "What is the capital of France?",
    "stream": False
})

data = response.json()
print(data["response"])
