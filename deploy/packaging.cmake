# Debian packages, built by CPack from a build tree (any CMAKE_INSTALL_PREFIX:
# the packages install under /usr):
#     cmake --build build && (cd build && cpack)      -> build/packages/*.deb
#   cofferd         the daemon, its systemd unit, the example configuration,
#                   init-token.sh; postinst makes the system user "coffer"
#   cofferctl       the admin CLI, its manual page and bash completion
#   libcofferX.Y    libcoffer.so.X.Y (the package is named after the soname,
#                   Debian policy 8.1: before 1.0 each minor release may
#                   change the ABI, so the soname carries major.minor)
#   libcoffer-dev   coffer.h, the libcoffer.so link, coffer.pc, the CMake
#                   package (find_package(coffer) -> coffer::coffer)
#   python3-coffer  client/python/coffer with its generated protobuf modules
# tests/integration/test_packages.py builds, lints and uses them.

set(COFFER_DEB_PREFIX /usr)
set(COFFER_LIB_PACKAGE "libcoffer${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")
set(COFFER_DEB_DIR ${CMAKE_BINARY_DIR}/deb)
set(COFFER_DEB_SRC ${CMAKE_SOURCE_DIR}/deploy/debian)

# Files whose text names the prefix: the package's own copies (prefix /usr),
# installed by cpack only (EXCLUDE_FROM_ALL: a plain `cmake --install`
# installs those of CMAKE_INSTALL_PREFIX).
function(coffer_deb_pc)
  set(CMAKE_INSTALL_PREFIX ${COFFER_DEB_PREFIX})
  configure_file(${CMAKE_SOURCE_DIR}/client/coffer.pc.in ${COFFER_DEB_DIR}/coffer.pc @ONLY)
endfunction()
coffer_deb_pc()
install(FILES ${COFFER_DEB_DIR}/coffer.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
  COMPONENT dev EXCLUDE_FROM_ALL)

# The unit (deploy/cofferd.service names /usr/local for a manual install).
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
  ${CMAKE_SOURCE_DIR}/deploy/cofferd.service)
file(READ ${CMAKE_SOURCE_DIR}/deploy/cofferd.service _unit)
string(REPLACE "\nExecStart=/usr/local/sbin/cofferd" "\nExecStart=${COFFER_DEB_PREFIX}/sbin/cofferd"
  _unit "${_unit}")
string(REPLACE "file:///usr/local/share/doc/coffer/README.md"
  "file://${COFFER_DEB_PREFIX}/share/doc/cofferd/README.md" _unit "${_unit}")
file(CONFIGURE OUTPUT ${CMAKE_BINARY_DIR}/deploy/cofferd.service CONTENT "${_unit}" @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/deploy/cofferd.service DESTINATION lib/systemd/system
  COMPONENT daemon EXCLUDE_FROM_ALL)
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/cofferd
  COMPONENT daemon EXCLUDE_FROM_ALL)
install(FILES deploy/cofferd.conf.example DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/cofferd/examples
  RENAME cofferd.conf COMPONENT daemon EXCLUDE_FROM_ALL)
install(PROGRAMS deploy/init-token.sh DESTINATION ${CMAKE_INSTALL_DATADIR}/cofferd
  COMPONENT daemon EXCLUDE_FROM_ALL)

# The CMake package (relocatable: the same for any prefix).
include(CMakePackageConfigHelpers)
configure_file(${COFFER_DEB_SRC}/cofferConfig.cmake.in ${CMAKE_BINARY_DIR}/cofferConfig.cmake
  COPYONLY)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/cofferConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(EXPORT cofferTargets NAMESPACE coffer:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/coffer
  COMPONENT dev)
install(FILES ${CMAKE_BINARY_DIR}/cofferConfig.cmake ${CMAKE_BINARY_DIR}/cofferConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/coffer COMPONENT dev)

# The Python client as the build tree has it (client/python/CMakeLists.txt):
# its sources with the protobuf modules generated beside them.
set(COFFER_DEB_COMPONENTS daemon cli lib dev python)
install(DIRECTORY ${CMAKE_BINARY_DIR}/client/python/coffer DESTINATION lib/python3/dist-packages
  COMPONENT python EXCLUDE_FROM_ALL PATTERN __pycache__ EXCLUDE PATTERN "*.pyc" EXCLUDE)

# Each package's copyright and (native package) changelog.
configure_file(${COFFER_DEB_SRC}/changelog.in ${COFFER_DEB_DIR}/changelog @ONLY)
add_custom_command(OUTPUT ${COFFER_DEB_DIR}/changelog.gz
  COMMAND gzip -9nc ${COFFER_DEB_DIR}/changelog > ${COFFER_DEB_DIR}/changelog.gz
  DEPENDS ${COFFER_DEB_DIR}/changelog)
add_custom_target(coffer_deb_changelog ALL DEPENDS ${COFFER_DEB_DIR}/changelog.gz)
set(_pkg_daemon cofferd)
set(_pkg_cli cofferctl)
set(_pkg_lib ${COFFER_LIB_PACKAGE})
set(_pkg_dev libcoffer-dev)
set(_pkg_python python3-coffer)
foreach(c ${COFFER_DEB_COMPONENTS})
  install(FILES ${COFFER_DEB_SRC}/copyright ${COFFER_DEB_DIR}/changelog.gz
    DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/${_pkg_${c}} COMPONENT ${c} EXCLUDE_FROM_ALL)
endforeach()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME coffer)
set(CPACK_PACKAGE_VENDOR "The Coffer authors")
set(CPACK_PACKAGE_CONTACT "Coffer maintainers <coffer@example.invalid>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${COFFER_DEB_PREFIX})
set(CPACK_OUTPUT_FILE_PREFIX packages)
set(CPACK_STRIP_FILES ON)
set(CPACK_COMPONENTS_ALL ${COFFER_DEB_COMPONENTS})
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# cofferctl links libcoffer from this tree: dpkg-shlibdeps finds it here;
# the dependency on its package is written below.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_BINARY_DIR})
set(_libdep "${COFFER_LIB_PACKAGE} (= ${PROJECT_VERSION})")

set(CPACK_DEBIAN_DAEMON_PACKAGE_NAME cofferd)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_DAEMON_PACKAGE_DEPENDS adduser)
set(CPACK_DEBIAN_DAEMON_PACKAGE_RECOMMENDS "softhsm2, cofferctl")
# Control files go in under their own names.
configure_file(${COFFER_DEB_SRC}/cofferd.postinst ${COFFER_DEB_DIR}/cofferd/postinst COPYONLY)
configure_file(${COFFER_DEB_SRC}/cofferd.postrm ${COFFER_DEB_DIR}/cofferd/postrm COPYONLY)
configure_file(${COFFER_DEB_SRC}/cofferd.prerm ${COFFER_DEB_DIR}/cofferd/prerm COPYONLY)
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_EXTRA
  ${COFFER_DEB_DIR}/cofferd/postinst ${COFFER_DEB_DIR}/cofferd/prerm
  ${COFFER_DEB_DIR}/cofferd/postrm)
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_COMPONENT_DAEMON_DESCRIPTION "hardware-backed key and signing service (daemon)
cofferd keeps keys in a PKCS#11 token (a hardware security module, or
SoftHSM2) and serves signing, verification, MACs and envelope encryption
to local callers over gRPC on Unix sockets, with sealed sessions for
secrets, per-caller grants, signed calls and a tamper-evident audit trail.
This package has the daemon, its systemd unit (Type=notify, watchdog,
sandboxed), an example configuration and a script that initialises a
SoftHSM2 token; it creates the system user coffer.")

set(CPACK_DEBIAN_CLI_PACKAGE_NAME cofferctl)
set(CPACK_DEBIAN_CLI_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_CLI_PACKAGE_DEPENDS ${_libdep})
set(CPACK_COMPONENT_CLI_DESCRIPTION "command-line client of the Coffer key service
cofferctl administers cofferd (keys, versions, rotation, principals, API
keys, the audit trail) and calls it: sign, verify, MAC, wrap and unwrap
from the shell. With its manual page and bash completion.")

set(CPACK_DEBIAN_LIB_PACKAGE_NAME ${COFFER_LIB_PACKAGE})
set(CPACK_DEBIAN_LIB_PACKAGE_SECTION libs)
# shlibs: "libcoffer 0.2 libcoffer0.2 (= 0.2.0)" (before 1.0 an exact
# version: no symbols file tracks the ABI yet). Only the lib package has a
# shared object.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY "=")
set(CPACK_DEBIAN_LIB_PACKAGE_CONTROL_EXTRA ${COFFER_DEB_DIR}/lib/triggers)
set(CPACK_DEBIAN_LIB_PACKAGE_CONTROL_STRICT_PERMISSION ON)
configure_file(${COFFER_DEB_SRC}/libcoffer.triggers ${COFFER_DEB_DIR}/lib/triggers COPYONLY)
set(CPACK_COMPONENT_LIB_DESCRIPTION "C client library of the Coffer key service
libcoffer calls cofferd: signing, verification, MACs, envelope encryption
and data keys, with sealed sessions, pinned daemon identity and signed
calls done for the caller. This package has the shared library.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libcoffer-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS ${_libdep})
set(CPACK_COMPONENT_DEV_DESCRIPTION "C client library of the Coffer key service (development)
libcoffer calls cofferd: signing, verification, MACs, envelope encryption
and data keys, with sealed sessions, pinned daemon identity and signed
calls done for the caller. This package has the header coffer.h, the
pkg-config file coffer.pc and the CMake package (coffer::coffer).")

set(CPACK_DEBIAN_PYTHON_PACKAGE_NAME python3-coffer)
set(CPACK_DEBIAN_PYTHON_PACKAGE_SECTION python)
set(CPACK_DEBIAN_PYTHON_PACKAGE_ARCHITECTURE all)
set(CPACK_DEBIAN_PYTHON_PACKAGE_SHLIBDEPS OFF)
set(CPACK_DEBIAN_PYTHON_PACKAGE_DEPENDS
  "python3, python3-grpcio, python3-protobuf, python3-cryptography")
set(CPACK_COMPONENT_PYTHON_DESCRIPTION "Python client of the Coffer key service
The coffer module calls cofferd from Python: signing, verification, MACs,
envelope encryption and data keys, with sealed sessions and signed calls
done for the caller.")

include(CPack)
