defmodule Vsmcp.Test.StaticHTTP do
  @moduledoc """
  A loopback HTTP/1.1 file server for tests: serves the files of one
  directory on 127.0.0.1, on a port the OS picks, standing in for a release
  host that publishes precompiled NIFs.

  GET only, one request per connection (`Connection: close`); the files
  are under `/nifs/` (`/nifs/<name>`, anything else is 404). Every request is
  reported to the process that started the server as
  `{Vsmcp.Test.StaticHTTP, path, status}`, so a test can tell what was
  downloaded. The server is linked to its owner and stops with it.
  """

  @doc "Serve `dir`; returns the base URL (`http://127.0.0.1:<port>/nifs`)."
  @spec start_link!(Path.t()) :: String.t()
  def start_link!(dir) do
    owner = self()

    {:ok, listen} =
      :gen_tcp.listen(0, [
        :binary,
        ip: {127, 0, 0, 1},
        packet: :http_bin,
        active: false,
        reuseaddr: true
      ])

    {:ok, port} = :inet.port(listen)
    acceptor = spawn_link(fn -> accept(listen, dir, owner) end)
    :ok = :gen_tcp.controlling_process(listen, acceptor)
    "http://127.0.0.1:#{port}/nifs"
  end

  defp accept(listen, dir, owner) do
    {:ok, socket} = :gen_tcp.accept(listen)
    handler = spawn(fn -> serve(socket, dir, owner) end)
    :ok = :gen_tcp.controlling_process(socket, handler)
    send(handler, :go)
    accept(listen, dir, owner)
  end

  defp serve(socket, dir, owner) do
    receive do
      :go -> :ok
    end

    with {:ok, {:http_request, method, {:abs_path, path}, _version}} <-
           :gen_tcp.recv(socket, 0, 10_000),
         :ok <- skip_headers(socket) do
      {status, body} = respond(method, dir, path)
      send(owner, {__MODULE__, path, status})

      :gen_tcp.send(socket, [
        "HTTP/1.1 #{status} #{reason(status)}\r\n",
        "Content-Type: application/octet-stream\r\n",
        "Content-Length: #{byte_size(body)}\r\n",
        "Connection: close\r\n\r\n",
        body
      ])
    end

    :gen_tcp.close(socket)
  end

  defp skip_headers(socket) do
    case :gen_tcp.recv(socket, 0, 10_000) do
      {:ok, :http_eoh} -> :ok
      {:ok, {:http_header, _, _, _, _}} -> skip_headers(socket)
      other -> other
    end
  end

  defp respond(:GET, dir, "/nifs/" <> name) do
    file = Path.join(dir, name)

    if name != "" and Path.basename(name) == name and File.regular?(file) do
      {200, File.read!(file)}
    else
      {404, ""}
    end
  end

  defp respond(_method, _dir, _path), do: {405, ""}

  defp reason(200), do: "OK"
  defp reason(404), do: "Not Found"
  defp reason(405), do: "Method Not Allowed"
end
