# Multi-node tests start real :peer nodes on loopback, which needs the Erlang
# port mapper daemon. .ci/run and bin/test start it; starting it here as well
# lets `mix test` work on its own. `epmd -daemon` is a no-op when one runs.
if epmd = System.find_executable("epmd") do
  System.cmd(epmd, ["-daemon"])
end

# The full-disk test mounts a small tmpfs, which needs root. Where that is
# not allowed the test is excluded, and the reason printed.
probe = Path.join(System.tmp_dir!(), "vsmcp_mount_probe_#{System.unique_integer([:positive])}")
File.mkdir_p!(probe)

mount_result =
  if System.find_executable("mount") && System.find_executable("umount") do
    System.cmd("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], stderr_to_stdout: true)
  else
    {"no mount command", 1}
  end

exclude =
  case mount_result do
    {_, 0} ->
      System.cmd("umount", [probe])
      []

    {out, _} ->
      IO.puts("excluding :needs_mount tests (cannot mount a tmpfs here: #{String.trim(out)})")
      [:needs_mount]
  end

File.rm_rf(probe)

ExUnit.start(exclude: exclude)
