; Inno Setup 6 script for the Windows installer. NOT BUILT OR TESTED on the Linux build machine;
; installers/windows/build_windows.ps1 freezes the app and runs ISCC with this script.
;
; Installs per user by default (no admin prompt) into %LOCALAPPDATA%\Programs\Omnivox, so the
; first-run GPU runtime can go beside the app; an all-users install under Program Files is
; read-only for users, and the runtime then goes to %LOCALAPPDATA%\Omnivox\gpu-runtime.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef SourceDir
  #define SourceDir "..\..\build\pyinstaller-dist\omnivox"
#endif

[Setup]
AppId={{6F1C9B8E-2D4A-4E7B-9C3F-0A5D8E2B7C41}
AppName=Omnivox
AppVersion={#AppVersion}
AppPublisher=Omnivox developers
DefaultDirName={autopf}\Omnivox
DefaultGroupName=Omnivox
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=omnivox-{#AppVersion}-windows-x64-setup
SetupIconFile=..\..\build\omnivox.ico
UninstallDisplayIcon={app}\omnivox.exe
; lzma2/fast: the payload is mostly compressed libraries; ultra takes many minutes for ~1 %
Compression=lzma2/fast
SolidCompression=no
WizardStyle=modern
DisableProgramGroupPage=yes

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\Omnivox"; Filename: "{app}\omnivox.exe"
Name: "{autodesktop}\Omnivox"; Filename: "{app}\omnivox.exe"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Run]
Filename: "{app}\omnivox.exe"; Description: "{cm:LaunchProgram,Omnivox}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; the GPU runtime the app downloaded beside itself (a per-user install)
Type: filesandordirs; Name: "{app}\gpu-runtime"
