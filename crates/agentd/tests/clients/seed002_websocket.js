// Seed 002's "Example: JavaScript Client" for /ws/chat, changed only in URL
// and key (and given the `ws` package, since Node 20 has no global WebSocket).
const WebSocket = require('ws');

const ws = new WebSocket(process.env.AGENTD_WS_URL + '/ws/chat?key=' + process.env.AGENTD_KEY);

ws.onopen = () => {
  ws.send(JSON.stringify({
    message: 'Hello, agent!'
  }));
};

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  
  if (data.type === 'token') {
    process.stdout.write(data.data);
  } else if (data.type === 'done') {
    console.log('\n\nComplete response:', data.data);
    console.log('Response ID:', data.response_id);
  } else if (data.type === 'error') {
    console.error('Error:', data.data);
  }
};
