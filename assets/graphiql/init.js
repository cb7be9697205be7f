// dfgraph's GraphiQL page: wires the vendored GraphiQL to /graphql and
// /graphql/ws. A file of its own (not inline) so a strict
// Content-Security-Policy (script-src 'self') can serve the page.
(function () {
  'use strict';
  // Endpoint: ?endpoint=URL, else window.DFGRAPH_ENDPOINT, else same-origin /graphql.
  // Websocket: ?ws=URL, else window.DFGRAPH_WS_ENDPOINT, else the endpoint + "/ws" as ws(s)://.
  var params = new URLSearchParams(location.search);
  var url = new URL(params.get('endpoint') || window.DFGRAPH_ENDPOINT || '/graphql', location.href);
  var wsUrl = params.get('ws') || window.DFGRAPH_WS_ENDPOINT;
  if (!wsUrl) {
    var w = new URL(url.href);
    w.protocol = w.protocol === 'https:' ? 'wss:' : 'ws:';
    w.pathname = w.pathname.replace(/\/$/, '') + '/ws';
    w.search = '';
    wsUrl = w.href;
  }

  function token() {
    try { return localStorage.getItem('dfgraphToken'); } catch (e) { return null; }
  }
  var headers = {};
  if (token()) headers.Authorization = 'Bearer ' + token();

  if (!window.GraphiQL || !window.React || !window.ReactDOM || !window.graphqlWs) {
    var err = document.getElementById('graphiql-error');
    err.hidden = false;
    err.textContent = 'GraphiQL assets failed to load from /assets/graphiql/.';
    return;
  }

  var wsClient = graphqlWs.createClient({
    url: wsUrl,
    lazy: true,
    retryAttempts: Infinity,
    shouldRetry: function () { return true; },
    connectionParams: function () {
      var t = token();
      return t ? { Authorization: 'Bearer ' + t } : {};
    }
  });

  var fetcher = GraphiQL.createFetcher({
    url: url.href,
    subscriptionUrl: wsUrl,
    wsClient: wsClient,
    headers: headers
  });

  var defaultQuery = [
    '# dfgraph: a real-time GraphQL gateway for Dragonfly P2P clusters.',
    '# Queries go to ' + url.href,
    '# Subscriptions go to ' + wsUrl + ' (graphql-transport-ws).',
    '',
    '{',
    '  hostStats { total byVersion { value count } byType { value count } missingClusters }',
    '  schedulerClusters { id reachable schedulers { address health { up circuit latencyMs } } }',
    '}',
    '',
    '# subscription { hostEvents { kind host { id hostname ip } changedFields observedAt } }',
    ''
  ].join('\n');

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultQuery: defaultQuery,
    defaultEditorToolsVisibility: true,
    shouldPersistHeaders: false
  }));
})();
